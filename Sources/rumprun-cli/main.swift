print("rumprun-cli")
