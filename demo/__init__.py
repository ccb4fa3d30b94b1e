"""``make demo``: Label Studio and the backend on loopback, a scripted annotator following the HUA queue.

``demo/labelstudio.py`` is also the end-to-end tests' harness (tests/labelstudio.py's fixtures use it).
"""
