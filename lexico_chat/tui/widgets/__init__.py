"""One module per widget of the chat app."""
