from ivdata.manifest.db import SCHEMA_VERSION, Manifest, ManifestError, utcnow, write_query_result

__all__ = ["Manifest", "ManifestError", "SCHEMA_VERSION", "utcnow", "write_query_result"]
