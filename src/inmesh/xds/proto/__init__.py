"""Generated protobuf modules of xDS resource schemas (each .proto says how to regenerate)."""
