"""Config revisions and the policies they carry (owned by the store/sync work)."""
