import threading

queue_lock = threading.Lock()  # the webui's is a FIFO lock with the same context-manager use
