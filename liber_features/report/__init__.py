"""``liber report``: gather what the pipeline holds, render one static HTML page and its figures."""
