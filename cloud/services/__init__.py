"""The cloud's service functions; the REST routes and the CLI are thin transports over them."""
