"""Example ASGI apps served by asgi-p2p: a music library (``apps.music``) and a chat room (``apps.chat``)."""
