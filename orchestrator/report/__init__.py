"""Reports over the result store: tables in the papers' layouts (tables), statistics (stats), figures
(plots), and the reproduction document (reproduction) with the papers' claims it checks (claims)."""
