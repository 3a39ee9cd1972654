"""The results store: typed, versioned records and the directories that hold them.

``records`` defines what every file holds, ``files`` reads and writes them (and lays out run
directories), ``versions`` upgrades files of earlier schema versions, ``runs`` reads run and
speed directories back as ``RunResult`` / ``SpeedDirectory``. The harness writes through
this package; reports and ``genbench.load_run`` read only through it.
"""
