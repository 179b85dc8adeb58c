"""``liber report``: gather what the pipeline holds, render one static HTML page and its figures.

``gather`` reads the ledger, Feast and the JSON files into a ``data.ReportData``; ``html``
renders it through the Jinja2 templates in ``templates/`` (autoescaped) and ``plots`` draws the
PNGs. ``html`` and ``plots`` import only ``data``, never ``gather``.
"""
