"""The model and the analyses. Nothing here prints or imports rich."""
