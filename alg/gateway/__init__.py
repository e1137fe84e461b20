"""The running gateway: sessions (a ControlChannel over real connections), the server, workers."""
