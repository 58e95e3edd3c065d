"""HTML reports: `report.html` per case (case_page) and `index.html` per cohort (cohort_page),
self-contained pages that open from the file system with no network (script and style are the
project's own, in static/, inlined; a case's volumes are packed into the page by `volumes`)."""
