"""Business logic of the fab server, shared by the gRPC servicer and the HTTP API."""
