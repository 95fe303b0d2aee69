package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// migration is one versioned schema change. The DDL is written once with type placeholders that each dialect
// fills in: {pk} an auto-increment 64-bit primary key, {int} a 64-bit integer, {text} text compared byte-wise,
// {blob} bytes, {real} a double.
type migration struct {
	version int
	name    string
	ddl     []string
}

// migrations are applied in order, each in its own transaction, and recorded in carta_schema. Never edit one that
// has shipped: add another.
var migrations = []migration{
	{1, "resources, history, search indexes, compartment", []string{
		`CREATE TABLE resources (
			rid {pk},
			type {text} NOT NULL,
			id {text} NOT NULL,
			version {int} NOT NULL,
			updated {int} NOT NULL,
			deleted {int} NOT NULL DEFAULT 0,
			raw {blob},
			UNIQUE (type, id))`,
		`CREATE INDEX resources_type_updated ON resources (type, updated)`,
		`CREATE TABLE history (
			rid {int} NOT NULL,
			version {int} NOT NULL,
			type {text} NOT NULL,
			id {text} NOT NULL,
			updated {int} NOT NULL,
			method {text} NOT NULL,
			deleted {int} NOT NULL DEFAULT 0,
			patients {text} NOT NULL DEFAULT '',
			raw {blob},
			PRIMARY KEY (rid, version))`,
		`CREATE INDEX history_type_updated ON history (type, updated)`,
		`CREATE INDEX history_updated ON history (updated)`,
		// Index tables are keyed by resource first (deleting a resource's rows is a range delete) and carry one
		// index for searching by value. On SQLite they are WITHOUT ROWID, so the key is the table itself.
		`CREATE TABLE idx_string (rid {int} NOT NULL, pid {int} NOT NULL, norm {text} NOT NULL, exact {text} NOT NULL,
			PRIMARY KEY (rid, pid, norm, exact)){norowid}`,
		`CREATE INDEX idx_string_value ON idx_string (pid, norm)`,
		`CREATE TABLE idx_token (rid {int} NOT NULL, pid {int} NOT NULL, system {text} NOT NULL, code {text} NOT NULL, text {text} NOT NULL,
			PRIMARY KEY (rid, pid, system, code, text)){norowid}`,
		`CREATE INDEX idx_token_value ON idx_token (pid, code, system)`,
		`CREATE INDEX idx_token_text ON idx_token (pid, text) WHERE text <> ''`,
		// A reference is a local Type/id (ttype set) or any other URL (ttype empty, tid the URL).
		`CREATE TABLE idx_ref (rid {int} NOT NULL, pid {int} NOT NULL, ttype {text} NOT NULL, tid {text} NOT NULL, tversion {text} NOT NULL,
			PRIMARY KEY (rid, pid, ttype, tid, tversion)){norowid}`,
		`CREATE INDEX idx_ref_target ON idx_ref (pid, tid, ttype)`,
		`CREATE TABLE idx_date (rid {int} NOT NULL, pid {int} NOT NULL, lo {int} NOT NULL, hi {int} NOT NULL,
			PRIMARY KEY (rid, pid, lo, hi)){norowid}`,
		`CREATE INDEX idx_date_lo ON idx_date (pid, lo)`,
		`CREATE INDEX idx_date_hi ON idx_date (pid, hi)`,
		`CREATE TABLE idx_number (rid {int} NOT NULL, pid {int} NOT NULL, value {real} NOT NULL,
			PRIMARY KEY (rid, pid, value)){norowid}`,
		`CREATE INDEX idx_number_value ON idx_number (pid, value)`,
		`CREATE TABLE idx_quantity (rid {int} NOT NULL, pid {int} NOT NULL, system {text} NOT NULL, code {text} NOT NULL, unit {text} NOT NULL, value {real} NOT NULL,
			PRIMARY KEY (rid, pid, system, code, unit, value)){norowid}`,
		`CREATE INDEX idx_quantity_value ON idx_quantity (pid, value)`,
		`CREATE TABLE idx_uri (rid {int} NOT NULL, pid {int} NOT NULL, uri {text} NOT NULL,
			PRIMARY KEY (rid, pid, uri)){norowid}`,
		`CREATE INDEX idx_uri_value ON idx_uri (pid, uri)`,
		// compartment: resource rid is in patient's compartment because of resource via (itself, or the
		// DocumentReference that points at a Binary).
		`CREATE TABLE compartment (patient {text} NOT NULL, rid {int} NOT NULL, via {int} NOT NULL,
			PRIMARY KEY (rid, via, patient)){norowid}`,
		`CREATE INDEX compartment_patient ON compartment (patient, rid)`,
		`CREATE INDEX compartment_via ON compartment (via) WHERE via <> rid`,
	}},
	{2, "settings, signing keys, revoked tokens", []string{
		`CREATE TABLE settings (name {text} PRIMARY KEY, value {text} NOT NULL)`,
		`CREATE TABLE signing_keys (kid {text} PRIMARY KEY, alg {text} NOT NULL, private_pem {text} NOT NULL, created {int} NOT NULL, retired {int} NOT NULL DEFAULT 0)`,
		`CREATE TABLE revoked_tokens (jti {text} PRIMARY KEY, expires {int} NOT NULL)`,
	}},
	{3, "write generation counter", []string{
		`CREATE TABLE carta_generation (id {int} PRIMARY KEY, n {int} NOT NULL)`,
		`INSERT INTO carta_generation (id, n) VALUES (1, 0)`,
	}},
	{4, "SMART authorization: clients, users, refresh tokens, issued tokens, launches", []string{
		`CREATE TABLE clients (id {text} PRIMARY KEY, name {text} NOT NULL, kind {text} NOT NULL, secret_hash {text} NOT NULL DEFAULT '',
			redirect_uris {text} NOT NULL DEFAULT '', launch_uri {text} NOT NULL DEFAULT '', scopes {text} NOT NULL DEFAULT '',
			jwks {text} NOT NULL DEFAULT '', jwks_url {text} NOT NULL DEFAULT '', created {int} NOT NULL, disabled {int} NOT NULL DEFAULT 0)`,
		`CREATE TABLE users (username {text} PRIMARY KEY, password_hash {text} NOT NULL, fhir_user {text} NOT NULL,
			created {int} NOT NULL, disabled {int} NOT NULL DEFAULT 0)`,
		`CREATE TABLE refresh_tokens (hash {text} PRIMARY KEY, family {text} NOT NULL, client_id {text} NOT NULL, subject {text} NOT NULL,
			fhir_user {text} NOT NULL DEFAULT '', patient {text} NOT NULL DEFAULT '', scope {text} NOT NULL, expires {int} NOT NULL,
			created {int} NOT NULL, used {int} NOT NULL DEFAULT 0, revoked {int} NOT NULL DEFAULT 0)`,
		`CREATE INDEX refresh_tokens_family ON refresh_tokens (family)`,
		`CREATE TABLE issued_tokens (jti {text} PRIMARY KEY, family {text} NOT NULL, expires {int} NOT NULL)`,
		`CREATE INDEX issued_tokens_family ON issued_tokens (family)`,
		`CREATE TABLE launches (id {text} PRIMARY KEY, client_id {text} NOT NULL, patient {text} NOT NULL DEFAULT '',
			encounter {text} NOT NULL DEFAULT '', fhir_user {text} NOT NULL DEFAULT '', expires {int} NOT NULL)`,
	}},
	{5, "audit log: every access and change, compact, until it is turned into AuditEvents", []string{
		`CREATE TABLE audit_log (id {pk}, start_at {int} NOT NULL, end_at {int} NOT NULL, agent {text} NOT NULL, client {text} NOT NULL,
			interaction {text} NOT NULL, action {text} NOT NULL, patient {text} NOT NULL, refs {text} NOT NULL, disclosure {int} NOT NULL)`,
		`CREATE INDEX audit_log_patient ON audit_log (patient, id)`,
	}},
	{6, "audit journal: the patients already taken out of a journal row", []string{
		`CREATE TABLE audit_done (journal {int} NOT NULL, patient {text} NOT NULL, PRIMARY KEY (journal, patient)){norowid}`,
	}},
}

// SchemaVersion is the schema version this build writes.
var SchemaVersion = migrations[len(migrations)-1].version

func (d dialect) ddl(s string) string {
	var r *strings.Replacer
	if d == dialectPostgres {
		r = strings.NewReplacer("{pk}", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "{int}", "BIGINT",
			"{text}", `TEXT COLLATE "C"`, "{blob}", "BYTEA", "{real}", "DOUBLE PRECISION", "{norowid}", "")
	} else {
		r = strings.NewReplacer("{pk}", "INTEGER PRIMARY KEY", "{int}", "INTEGER", "{text}", "TEXT",
			"{blob}", "BLOB", "{real}", "REAL", "{norowid}", " WITHOUT ROWID")
	}
	return r.Replace(s)
}

// migrate brings the schema up to date. Replicas starting together on PostgreSQL serialize on an advisory lock;
// on SQLite the immediate transaction is the lock.
func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	const lockKey = 0x63617274 // "cart"
	if s.d == dialectPostgres {
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
			return fmt.Errorf("store: taking the migration lock: %w", err)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockKey)
	}
	if _, err := conn.ExecContext(ctx, s.d.ddl(`CREATE TABLE IF NOT EXISTS carta_schema (version {int} PRIMARY KEY, name {text} NOT NULL, applied {int} NOT NULL)`)); err != nil {
		return fmt.Errorf("store: creating the schema table: %w", err)
	}
	current := 0
	if err := conn.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM carta_schema`).Scan(&current); err != nil {
		return fmt.Errorf("store: reading the schema version: %w", err)
	}
	if current > SchemaVersion {
		return fmt.Errorf("store: the database has schema version %d, newer than this build (%d); upgrade carta", current, SchemaVersion)
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		if err := s.apply(ctx, conn, m); err != nil {
			return fmt.Errorf("store: migration %d (%s): %w", m.version, m.name, err)
		}
		s.log.Info("schema migrated", "version", m.version, "name", m.name)
	}
	return nil
}

func (s *Store) apply(ctx context.Context, conn *sql.Conn, m migration) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Another process may have applied it while we waited (SQLite takes the lock at BEGIN).
	var done int
	if err := tx.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM carta_schema WHERE version = ?`), m.version).Scan(&done); err != nil {
		return err
	}
	if done > 0 {
		return nil
	}
	for _, stmt := range m.ddl {
		if _, err := tx.ExecContext(ctx, s.d.ddl(stmt)); err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(stmt)[0:3], err)
		}
	}
	if _, err := tx.ExecContext(ctx, s.d.rebind(`INSERT INTO carta_schema (version, name, applied) VALUES (?, ?, ?)`), m.version, m.name, micros(s.now())); err != nil {
		return err
	}
	return tx.Commit()
}
