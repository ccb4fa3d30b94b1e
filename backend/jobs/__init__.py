"""Background jobs: their shared state (``board``), where they run (``runners``), when (``scheduler``),
what they do (``train``, ``rank``, ``predict``), a ranking split into shards (``shards``) and the entry
point every way of running them calls (``entry``)."""
