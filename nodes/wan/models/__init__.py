"""The Wan networks on MindSpore, built from a config; they import only `backend`."""
