"""Device runtime choices and CPU kernels (oneDNN convolutions and feed-forward); imports nothing else of Wan."""
