"""One module per screen of the chat app: the main chat screen and the modal screens pushed over it."""
