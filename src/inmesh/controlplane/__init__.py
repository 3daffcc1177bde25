"""The inmesh control plane: the mesh CA (`ca`, `caauth`, `caserver`), node credentials
(`nodecreds`) and the discovery service. Import from the modules; each states its contract."""
