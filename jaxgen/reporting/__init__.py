"""What a run leaves in its workdir: metrics (JSON lines and TensorBoard), image grids and plots."""
