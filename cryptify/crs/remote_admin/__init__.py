"""Remote administration of the CRS: admins and their rights (``store``), who may
do what (``auth``, sans-IO), and the TLS interface with its console (``server``)."""
