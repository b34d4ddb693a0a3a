"""Text → L2-normalised vector. One file per backend; `build_embedder` picks one."""
