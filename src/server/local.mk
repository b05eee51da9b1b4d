# vhdnbd, the server.
