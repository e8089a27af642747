"""CloudSync: the gRPC endpoint the fab servers upload labels and aggregates to and take their
deployment plan from (`cloud.proto`). Thin transport over `cloud.services.sync`."""
