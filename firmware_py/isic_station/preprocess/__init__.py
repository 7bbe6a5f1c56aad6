"""Model-input preprocessing shared by training and both inference backends (numpy/OpenCV only)."""
