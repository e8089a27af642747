"""The gRPC transport: FabService servicer, protobuf conversion and server start-up."""
