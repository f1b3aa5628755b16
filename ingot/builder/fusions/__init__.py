"""Pattern rewrites for the cpu plan (ingot.builder.fuse_cpu applies them)."""
