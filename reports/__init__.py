"""Reports: read the results store and render comparisons (never touch live objects).

``load`` gathers run and speed directories and the speed history from ``genbench.store``,
``model`` is the report as data (tables of cells, protocol groups), ``tables`` builds the
tables with their protocol marks, ``published`` matches published figures, ``markdown`` and
``html`` render, ``plots`` draws (matplotlib, imported when a figure is drawn), ``report``
ties them together for ``bench report`` and ``bench run``.
"""
