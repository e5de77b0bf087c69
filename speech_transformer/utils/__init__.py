"""Plumbing every stage uses: files written atomically, the cache folder and resuming downloads (`files`);
process facts and set-up: memory (RSS), torchrun's distributed set-up, allocator trims (`runtime`)."""
