-- Schema version 6: the build recipe of each published manifest (its `Provenance.recipe`,
-- `precomp_builder::RECIPE`), NULL when the manifest records none (builders from before
-- recipes were recorded). Audit leases offer a build only to auditors of its recipe
-- (`store/jobs.rs` `select_audit`). Rows of an older database are filled in from their
-- signed manifests by the opening precomp, in the same transaction (`migrations.rs`
-- `fill_recipes`).
ALTER TABLE manifests ADD COLUMN recipe TEXT;
