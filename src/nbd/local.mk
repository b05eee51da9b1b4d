# NBD codec (bytes <-> options, requests, replies); no sockets.
