package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/carta-fhir/carta/fhir"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Stored is one version of a resource as stored.
type Stored struct {
	rid     int64
	Type    string
	ID      string
	Version int64
	Updated time.Time
	Deleted bool
	// Raw is the resource JSON exactly as served (client content plus id and meta); nil for a deletion.
	Raw []byte
	// Method is the interaction that made this version (POST, PUT, DELETE), for history bundles.
	Method string
}

// VersionID returns the version as meta.versionId writes it.
func (s *Stored) VersionID() string { return strconv.FormatInt(s.Version, 10) }

// WriteResult says what a write did.
type WriteResult struct {
	*Stored
	// Created is true when the write created the resource (201).
	Created bool
	// Unchanged is true when nothing was written: an update identical to the current version, a conditional
	// create that found its match, or a delete of something already deleted.
	Unchanged bool
}

// Hook applies the rules of the layer above to every write of one resource type, inside the write's
// transaction, whatever path the write came by (REST, a Bundle entry, a conditional write, an import).
type Hook interface {
	// Write sees a create (cur nil), an update, or a delete (res nil) before it is made. It may refuse it, or
	// return the resource to write instead of res, and a function to run after the write in the same
	// transaction (for the writes the rule implies; they should be Trusted).
	Write(tx *Tx, typ, id string, cur *Stored, res *fhir.Object) (*fhir.Object, func(*Stored) error, error)
}

// Auditor records a change (create, update, delete) in the transaction that makes it: typ/id at its new
// version, in the compartments of patients. AuditEvent writes are not audited.
type Auditor func(tx *Tx, st *Stored, action string, patients []string) error

// SetAuditor installs the auditor of changes. Call it before serving.
func (s *Store) SetAuditor(a Auditor) { s.auditor = a }

func (t *Tx) audit(st *Stored, action string, patients []string) error {
	if t.s.auditor == nil || st.Type == "AuditEvent" {
		return nil
	}
	return t.s.auditor(t, st, action, patients)
}

// SetHook installs the hook for a resource type. Call it before serving.
func (s *Store) SetHook(typ string, h Hook) {
	if s.hooks == nil {
		s.hooks = map[string]Hook{}
	}
	s.hooks[typ] = h
}

func (t *Tx) hook(trusted bool, typ, id string, cur *Stored, res *fhir.Object) (*fhir.Object, func(*Stored) error, error) {
	h := t.s.hooks[typ]
	if h == nil || trusted {
		return res, nil, nil
	}
	return h.Write(t, typ, id, cur, res)
}

// Context is the context of the request that the transaction serves (its values, without its cancellation).
func (t *Tx) Context() context.Context { return t.ctx }

// Tx is a unit of work: every write made through it commits or rolls back together. A transaction Bundle is one Tx.
type Tx struct {
	s   *Store
	tx  *sql.Tx
	ctx context.Context
	now time.Time
	// locked records the conditional-operation locks this transaction holds.
	locked map[string]bool
	// touched is what the read cache must forget once this transaction commits.
	touched []string
}

// InTx runs fn in a database transaction, committing when it returns nil. All writes in one Tx share one
// lastUpdated instant. fn must not call InTx itself.
//
// On SQLite, transactions go to one committer (see commit.go) that may run several in one database transaction,
// each inside its own savepoint: a failing fn undoes only its own writes, and every caller returns after the
// commit that made its writes durable.
func (s *Store) InTx(ctx context.Context, fn func(*Tx) error) error {
	return s.inTx(ctx, fn, false)
}

// InTxLarge is InTx for a transaction that may write a lot (a transaction Bundle): on SQLite it is committed on
// its own rather than sharing a commit with other writes.
func (s *Store) InTxLarge(ctx context.Context, fn func(*Tx) error) error {
	return s.inTx(ctx, fn, true)
}

func (s *Store) inTx(ctx context.Context, fn func(*Tx) error, large bool) error {
	if s.jobs != nil {
		return s.enqueue(ctx, fn, large)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("starting a transaction", err)
	}
	t := &Tx{s: s, tx: tx, ctx: ctx, now: s.now().UTC().Truncate(time.Millisecond)}
	if err := fn(t); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr("committing", err)
	}
	return nil
}

// touch records that a resource changed, for the read cache.
func (t *Tx) touch(typ, id string) {
	if t.s.cache != nil {
		t.touched = append(t.touched, cacheKey(typ, id))
	}
}

// dbErr turns a driver error into an error for callers: lock timeouts and serialization failures become 409 or
// 503 *fhir.Error (the client may retry); anything else is internal.
func (s *Store) dbErr(what string, err error) error {
	if _, ok := fhir.AsError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	var se *sqlite.Error
	if errors.As(err, &se) && (se.Code()&0xff == sqlite3.SQLITE_BUSY || se.Code()&0xff == sqlite3.SQLITE_LOCKED) {
		return &fhir.Error{Status: http.StatusServiceUnavailable, Issues: []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.IssueTransient, Diagnostics: "the database is busy; retry the request"}}, Headers: map[string]string{"Retry-After": "1"}}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01") {
		return fhir.Errorf(http.StatusConflict, fhir.IssueTransient, "the write conflicted with a concurrent one; retry the request")
	}
	return fmt.Errorf("store: %s: %w", what, err)
}

func uniqueViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func (t *Tx) exec(q string, args ...any) error {
	_, err := t.execContext(t.s.d.rebind(q), args...)
	if err != nil {
		return t.s.dbErr("writing", err)
	}
	return nil
}

// Statements in a transaction go through the store's statement cache on SQLite, whose driver would otherwise parse
// every statement anew (PostgreSQL's driver caches them itself).
func (t *Tx) cached(q string) (*sql.Stmt, bool) {
	if t.s.d != dialectSQLite {
		return nil, false
	}
	st, err := t.s.stmt(t.ctx, q)
	if err != nil {
		return nil, false
	}
	return t.tx.StmtContext(t.ctx, st), true
}

func (t *Tx) execContext(q string, args ...any) (sql.Result, error) {
	if st, ok := t.cached(q); ok {
		return st.ExecContext(t.ctx, args...)
	}
	return t.tx.ExecContext(t.ctx, q, args...)
}

func (t *Tx) queryContext(q string, args ...any) (*sql.Rows, error) {
	if st, ok := t.cached(q); ok {
		return st.QueryContext(t.ctx, args...)
	}
	return t.tx.QueryContext(t.ctx, q, args...)
}

func (t *Tx) queryRow(q string, args ...any) *sql.Row {
	if st, ok := t.cached(q); ok {
		return st.QueryRowContext(t.ctx, args...)
	}
	return t.tx.QueryRowContext(t.ctx, q, args...)
}

// Now is the lastUpdated instant of this transaction's writes.
func (t *Tx) Now() time.Time { return t.now }

// lockConditional serializes conditional operations on one resource type across replicas, so that concurrent
// conditional creates with the same criteria cannot both find nothing and both create. On SQLite the
// transaction already holds the database's single write lock.
func (t *Tx) lockConditional(typ string) error {
	if t.s.d != dialectPostgres || t.locked[typ] {
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte("carta-conditional/" + typ))
	if err := t.exec(`SELECT pg_advisory_xact_lock(?)`, int64(h.Sum64())); err != nil {
		return err
	}
	if t.locked == nil {
		t.locked = map[string]bool{}
	}
	t.locked[typ] = true
	return nil
}

// CreateOptions modify a create.
type CreateOptions struct {
	// ID, when set, is the id to create with (update-as-create); otherwise the server assigns one.
	ID string
	// IfNoneExist makes the create conditional: nothing is created when exactly one resource matches.
	IfNoneExist *fhir.Query
	// Method is recorded in history ("POST" unless set).
	Method string
	// Trusted writes come from the server's own rules and skip the type's Hook.
	Trusted bool
}

// Create stores a new resource (already parsed and validated). With IfNoneExist it returns the one existing match
// unchanged, or a 412 *fhir.Error when several match. A patient-limited caller may only create resources in its
// patient's compartment (403 otherwise).
func (t *Tx) Create(typ string, res *fhir.Object, opt CreateOptions, acc *fhir.Access) (*WriteResult, error) {
	if opt.IfNoneExist != nil {
		if err := t.lockConditional(typ); err != nil {
			return nil, err
		}
		found, err := t.matchAll(opt.IfNoneExist, acc, 2)
		if err != nil {
			return nil, err
		}
		switch len(found) {
		case 0:
		case 1:
			return &WriteResult{Stored: found[0], Unchanged: true}, nil
		default:
			return nil, fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueMultiple, "If-None-Exist matched more than one %s; make the criteria more selective", typ)
		}
	}
	id := opt.ID
	if id == "" {
		id = uuid.NewString()
	}
	res, after, err := t.hook(opt.Trusted, typ, id, nil, res)
	if err != nil {
		return nil, err
	}
	method := opt.Method
	if method == "" {
		method = http.MethodPost
	}
	st := &Stored{Type: typ, ID: id, Version: 1, Updated: t.now, Method: method}
	fhir.StampMeta(res, id, fhir.Meta{VersionID: "1", LastUpdated: t.now})
	st.Raw = fhir.AppendJSON(nil, res)
	idx := t.s.indexer.Extract(res)
	patients, err := t.patientsOf(typ, id, res, idx)
	if err != nil {
		return nil, err
	}
	if err := checkWriteAccess(acc, typ, patients); err != nil {
		return nil, err
	}
	var rows batchInsert
	if t.s.d == dialectPostgres {
		// The row goes in the same statement as everything else the version writes (one round trip).
		rid, err := t.s.allocRID(t)
		if err != nil {
			return nil, err
		}
		st.rid = rid
		rows.add("resources", "rid, type, id, version, updated, deleted, raw", rid, typ, id, 1, micros(t.now), 0, st.Raw)
	} else {
		row := t.queryRow(`INSERT INTO resources (type, id, version, updated, deleted, raw) VALUES (?, ?, 1, ?, 0, ?) RETURNING rid`,
			typ, id, micros(t.now), st.Raw)
		if err := row.Scan(&st.rid); err != nil {
			if uniqueViolation(err) {
				return nil, fhir.Errorf(http.StatusConflict, fhir.IssueDuplicate, "%s/%s already exists", typ, id)
			}
			return nil, t.s.dbErr("creating", err)
		}
	}
	t.touch(typ, id)
	if err := t.writeVersion(st, patients, idx, &rows); err != nil {
		if uniqueViolation(err) {
			return nil, fhir.Errorf(http.StatusConflict, fhir.IssueDuplicate, "%s/%s already exists", typ, id)
		}
		return nil, err
	}
	if after != nil {
		if err := after(st); err != nil {
			return nil, err
		}
	}
	if err := t.audit(st, "C", patients); err != nil {
		return nil, err
	}
	return &WriteResult{Stored: st, Created: true}, nil
}

// UpdateOptions modify an update.
type UpdateOptions struct {
	// IfMatch, when set, is the version the client expects to replace (from If-Match: W/"n").
	IfMatch string
	// Check, when set, may refuse the change after seeing the current version (e.g. a restricted scope).
	Check func(cur *Stored) error
	// Trusted writes come from the server's own rules and skip the type's Hook.
	Trusted bool
}

// Update replaces a resource with a new version, or creates it with the client's id when it does not exist
// (update-as-create). An update identical to the current version (apart from meta.versionId and
// meta.lastUpdated) writes nothing and returns the current version. A stale IfMatch gives 412.
func (t *Tx) Update(typ, id string, res *fhir.Object, opt UpdateOptions, acc *fhir.Access) (*WriteResult, error) {
	cur, curPatients, err := t.current(typ, id)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		if opt.IfMatch != "" {
			return nil, fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueConflict, "If-Match: %s/%s does not exist, so no version matches %q", typ, id, opt.IfMatch)
		}
		return t.Create(typ, res, CreateOptions{ID: id, Method: http.MethodPut, Trusted: opt.Trusted}, acc)
	}
	if acc.PatientOnly() != "" && !cur.Deleted && !contains(curPatients, acc.Patient) {
		return nil, forbiddenWrite(typ)
	}
	if opt.IfMatch != "" && opt.IfMatch != cur.VersionID() {
		return nil, fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueConflict, "If-Match: %s/%s is at version %d, not %s; read it again and reapply the change", typ, id, cur.Version, opt.IfMatch)
	}
	if !cur.Deleted && opt.Check != nil {
		if err := opt.Check(cur); err != nil {
			return nil, err
		}
	}
	var hookCur *Stored
	if !cur.Deleted {
		hookCur = cur
	}
	res, after, err := t.hook(opt.Trusted, typ, id, hookCur, res)
	if err != nil {
		return nil, err
	}
	if !cur.Deleted && sameContent(cur.Raw, res) {
		return &WriteResult{Stored: cur, Unchanged: true}, nil
	}
	st := &Stored{rid: cur.rid, Type: typ, ID: id, Version: cur.Version + 1, Updated: t.now, Method: http.MethodPut}
	fhir.StampMeta(res, id, fhir.Meta{VersionID: st.VersionID(), LastUpdated: t.now})
	st.Raw = fhir.AppendJSON(nil, res)
	idx := t.s.indexer.Extract(res)
	patients, err := t.patientsOf(typ, id, res, idx)
	if err != nil {
		return nil, err
	}
	if err := checkWriteAccess(acc, typ, patients); err != nil {
		return nil, err
	}
	r, err := t.execContext(t.s.d.rebind(`UPDATE resources SET version = ?, updated = ?, deleted = 0, raw = ? WHERE rid = ? AND version = ?`),
		st.Version, micros(t.now), st.Raw, cur.rid, cur.Version)
	if err != nil {
		return nil, t.s.dbErr("updating", err)
	}
	if n, _ := r.RowsAffected(); n != 1 {
		return nil, fhir.Errorf(http.StatusConflict, fhir.IssueConflict, "%s/%s changed while it was being updated; retry", typ, id)
	}
	t.touch(typ, id)
	if err := t.clearIndex(cur.rid); err != nil {
		return nil, err
	}
	if err := t.writeVersion(st, patients, idx, &batchInsert{}); err != nil {
		return nil, err
	}
	if after != nil {
		if err := after(st); err != nil {
			return nil, err
		}
	}
	if err := t.audit(st, "U", patients); err != nil {
		return nil, err
	}
	return &WriteResult{Stored: st, Created: cur.Deleted}, nil
}

// DeleteOptions modify a delete.
type DeleteOptions struct {
	IfMatch string
	// Check, when set, may refuse the deletion after seeing the current version.
	Check func(cur *Stored) error
	// Trusted deletes come from the server's own rules and skip the type's Hook.
	Trusted bool
}

// Delete marks a resource deleted: reads then answer 410, searches no longer find it, and its history keeps every
// version. Deleting an already deleted resource changes nothing. A resource that never existed gives 404.
func (t *Tx) Delete(typ, id string, opt DeleteOptions, acc *fhir.Access) (*WriteResult, error) {
	cur, curPatients, err := t.current(typ, id)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return nil, fhir.NotFound(typ, id)
	}
	if acc.PatientOnly() != "" {
		if cur.Deleted {
			return nil, fhir.NotFound(typ, id)
		}
		if !contains(curPatients, acc.Patient) {
			return nil, fhir.NotFound(typ, id)
		}
		if !fhir.InCompartment(typ) {
			return nil, forbiddenWrite(typ)
		}
	}
	if opt.IfMatch != "" && opt.IfMatch != cur.VersionID() {
		return nil, fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueConflict, "If-Match: %s/%s is at version %d, not %s", typ, id, cur.Version, opt.IfMatch)
	}
	if cur.Deleted {
		return &WriteResult{Stored: cur, Unchanged: true}, nil
	}
	if opt.Check != nil {
		if err := opt.Check(cur); err != nil {
			return nil, err
		}
	}
	if _, _, err := t.hook(opt.Trusted, typ, id, cur, nil); err != nil {
		return nil, err
	}
	st := &Stored{rid: cur.rid, Type: typ, ID: id, Version: cur.Version + 1, Updated: t.now, Deleted: true, Method: http.MethodDelete}
	r, err := t.execContext(t.s.d.rebind(`UPDATE resources SET version = ?, updated = ?, deleted = 1, raw = NULL WHERE rid = ? AND version = ?`),
		st.Version, micros(t.now), cur.rid, cur.Version)
	if err != nil {
		return nil, t.s.dbErr("deleting", err)
	}
	if n, _ := r.RowsAffected(); n != 1 {
		return nil, fhir.Errorf(http.StatusConflict, fhir.IssueConflict, "%s/%s changed while it was being deleted; retry", typ, id)
	}
	t.touch(typ, id)
	if err := t.exec(`INSERT INTO history (rid, version, type, id, updated, method, deleted, patients, raw) VALUES (?, ?, ?, ?, ?, ?, 1, ?, NULL)`,
		cur.rid, st.Version, typ, id, micros(t.now), http.MethodDelete, joinPatients(curPatients)); err != nil {
		return nil, err
	}
	if err := t.clearIndex(cur.rid); err != nil {
		return nil, err
	}
	if err := t.audit(st, "D", curPatients); err != nil {
		return nil, err
	}
	return &WriteResult{Stored: st}, nil
}

func forbiddenWrite(typ string) error {
	return fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "a patient-scoped token may only write resources in its own patient's compartment; this %s is not", typ)
}

// checkWriteAccess refuses a patient-limited caller a write whose result would not be in its compartment.
func checkWriteAccess(acc *fhir.Access, typ string, patients []string) error {
	p := acc.PatientOnly()
	if p == "" {
		return nil
	}
	if !fhir.InCompartment(typ) || !contains(patients, p) {
		return forbiddenWrite(typ)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// sameContent reports whether stored JSON and a new resource hold the same data apart from server-managed meta.
func sameContent(storedRaw []byte, res *fhir.Object) bool {
	v, err := fhir.ParseJSON(storedRaw)
	if err != nil {
		return false
	}
	old, ok := v.(*fhir.Object)
	if !ok {
		return false
	}
	nw := fhir.Clone(res).(*fhir.Object)
	fhir.StripServerMeta(old)
	fhir.StripServerMeta(nw)
	return fhir.Equal(old, nw)
}

// current reads the current row of a resource for writing (locking it on PostgreSQL) and its compartment
// patients. It returns nil when the resource never existed.
func (t *Tx) current(typ, id string) (*Stored, []string, error) {
	q := `SELECT rid, version, updated, deleted, raw FROM resources WHERE type = ? AND id = ?`
	if t.s.d == dialectPostgres {
		q += ` FOR UPDATE`
	}
	st := &Stored{Type: typ, ID: id}
	var upd, del int64
	err := t.queryRow(t.s.d.rebind(q), typ, id).Scan(&st.rid, &st.Version, &upd, &del, &st.Raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, t.s.dbErr("reading", err)
	}
	st.Updated, st.Deleted = fromMicros(upd), del != 0
	var patients []string
	if st.Deleted {
		var p string
		err := t.queryRow(t.s.d.rebind(`SELECT patients FROM history WHERE rid = ? AND version = ?`), st.rid, st.Version).Scan(&p)
		if err != nil {
			return nil, nil, t.s.dbErr("reading", err)
		}
		patients = splitPatients(p)
	} else {
		patients, err = t.compartmentOf(st.rid)
		if err != nil {
			return nil, nil, err
		}
	}
	return st, patients, nil
}

func (t *Tx) compartmentOf(rid int64) ([]string, error) {
	return t.strings(`SELECT DISTINCT patient FROM compartment WHERE rid = ?`, rid)
}

// strings runs a query of one text column and returns its values.
func (t *Tx) strings(q string, args ...any) ([]string, error) {
	rows, err := t.queryContext(t.s.d.rebind(q), args...)
	if err != nil {
		return nil, t.s.dbErr("reading", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// writeVersion writes the history row, index rows and compartment rows of a new version.
func (t *Tx) writeVersion(st *Stored, patients []string, idx *fhir.Index, rows *batchInsert) error {
	histPatients := patients
	// A Binary is in the compartments of the DocumentReferences that point at it.
	var docPatients map[int64][]string
	if st.Type == "Binary" {
		var err error
		docPatients, err = t.documentsReferencing(st.ID)
		if err != nil {
			return err
		}
		for _, ps := range docPatients {
			histPatients = union(histPatients, ps)
		}
	}
	rows.add("history", "rid, version, type, id, updated, method, deleted, patients, raw",
		st.rid, st.Version, st.Type, st.ID, micros(st.Updated), st.Method, 0, joinPatients(histPatients), st.Raw)
	indexRows(rows, st.rid, st.Type, idx)
	const compCols = "patient, rid, via"
	for _, p := range patients {
		rows.add("compartment", compCols, p, st.rid, st.rid)
	}
	for doc, ps := range docPatients {
		for _, p := range ps {
			rows.add("compartment", compCols, p, st.rid, doc)
		}
	}
	if st.Type == "DocumentReference" && len(patients) > 0 {
		bins, binIDs, err := t.binariesReferenced(idx)
		if err != nil {
			return err
		}
		for _, id := range binIDs {
			t.touch("Binary", id)
		}
		for _, b := range bins {
			for _, p := range patients {
				rows.add("compartment", compCols, p, b, st.rid)
			}
		}
	}
	return t.writeRows(rows)
}

// clearIndex removes the index and compartment rows a resource contributed.
func (t *Tx) clearIndex(rid int64) error {
	if t.s.cache != nil {
		// Resources whose compartment this one extended (a DocumentReference's Binaries) change too.
		rows, err := t.queryContext(t.s.d.rebind(`SELECT DISTINCT r.type, r.id FROM compartment c JOIN resources r ON r.rid = c.rid
			WHERE c.via = ? AND c.via <> c.rid`), rid)
		if err != nil {
			return t.s.dbErr("reading", err)
		}
		for rows.Next() {
			var typ, id string
			if err := rows.Scan(&typ, &id); err != nil {
				rows.Close()
				return err
			}
			t.touch(typ, id)
		}
		rows.Close()
	}
	if t.s.d == dialectPostgres {
		return t.exec(`WITH a AS (DELETE FROM idx_string WHERE rid = ?), b AS (DELETE FROM idx_token WHERE rid = ?),
			c AS (DELETE FROM idx_ref WHERE rid = ?), d AS (DELETE FROM idx_date WHERE rid = ?),
			e AS (DELETE FROM idx_number WHERE rid = ?), f AS (DELETE FROM idx_quantity WHERE rid = ?),
			g AS (DELETE FROM idx_uri WHERE rid = ?), h AS (DELETE FROM compartment WHERE via = ? AND via <> rid)
			DELETE FROM compartment WHERE rid = ?`, rid, rid, rid, rid, rid, rid, rid, rid, rid)
	}
	for _, tbl := range []string{"idx_string", "idx_token", "idx_ref", "idx_date", "idx_number", "idx_quantity", "idx_uri"} {
		if err := t.exec(`DELETE FROM `+tbl+` WHERE rid = ?`, rid); err != nil {
			return err
		}
	}
	if err := t.exec(`DELETE FROM compartment WHERE via = ? AND via <> rid`, rid); err != nil {
		return err
	}
	return t.exec(`DELETE FROM compartment WHERE rid = ?`, rid)
}

// ParamID is the stable numeric id of a search parameter of a type in the index tables.
func ParamID(typ, code string) int64 {
	h := fnv.New32a()
	h.Write([]byte(typ))
	h.Write([]byte{'.'})
	h.Write([]byte(code))
	return int64(h.Sum32())
}

// indexRows adds a resource's index entries to rows.
func indexRows(rows *batchInsert, rid int64, typ string, idx *fhir.Index) {
	for _, e := range idx.Strings {
		rows.add("idx_string", "rid, pid, norm, exact", rid, ParamID(typ, e.Param), e.Norm, e.Exact)
	}
	for _, e := range idx.Tokens {
		rows.add("idx_token", "rid, pid, system, code, text", rid, ParamID(typ, e.Param), e.System, e.Code, e.Text)
	}
	for _, e := range idx.Refs {
		if e.Type == "" {
			rows.add("idx_ref", "rid, pid, ttype, tid, tversion", rid, ParamID(typ, e.Param), "", e.URL, "")
		} else {
			rows.add("idx_ref", "rid, pid, ttype, tid, tversion", rid, ParamID(typ, e.Param), e.Type, e.ID, e.Version)
		}
	}
	for _, e := range idx.Dates {
		rows.add("idx_date", "rid, pid, lo, hi", rid, ParamID(typ, e.Param), e.Lo, e.Hi)
	}
	for _, e := range idx.Numbers {
		rows.add("idx_number", "rid, pid, value", rid, ParamID(typ, e.Param), e.Value)
	}
	for _, e := range idx.Quantities {
		rows.add("idx_quantity", "rid, pid, system, code, unit, value", rid, ParamID(typ, e.Param), e.System, e.Code, e.Unit, e.Value)
	}
	for _, e := range idx.URIs {
		rows.add("idx_uri", "rid, pid, uri", rid, ParamID(typ, e.Param), e.URI)
	}
}

// batchInsert gathers the rows a write makes, table by table, so they can be written with few statements.
type batchInsert struct {
	parts []*insertPart
}

type insertPart struct {
	table, cols string
	width, n    int
	args        []any
}

func (b *batchInsert) add(table, cols string, vals ...any) {
	var p *insertPart
	for _, q := range b.parts {
		if q.table == table {
			p = q
			break
		}
	}
	if p == nil {
		p = &insertPart{table: table, cols: cols, width: len(vals)}
		b.parts = append(b.parts, p)
	}
	p.args = append(p.args, vals...)
	p.n++
}

func (p *insertPart) sql(b *strings.Builder, from, to int) {
	b.WriteString("INSERT INTO ")
	b.WriteString(p.table)
	b.WriteString(" (")
	b.WriteString(p.cols)
	b.WriteString(") VALUES ")
	row := "(" + strings.Repeat("?, ", p.width-1) + "?)"
	for i := from; i < to; i++ {
		if i > from {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
}

// maxPGParams keeps one PostgreSQL statement well under the protocol's 65,535 parameters.
const maxPGParams = 30000

// writeRows writes gathered rows. On PostgreSQL they go in one statement (data-modifying WITH clauses, one round
// trip) when they fit; on SQLite, where statements cost no round trip, each table gets multi-row INSERTs of at
// most 400 rows through cached statements.
func (t *Tx) writeRows(rows *batchInsert) error {
	if len(rows.parts) == 0 {
		return nil
	}
	if t.s.d == dialectPostgres {
		total := 0
		for _, p := range rows.parts {
			total += len(p.args)
		}
		if total <= maxPGParams {
			var b strings.Builder
			args := make([]any, 0, total)
			last := len(rows.parts) - 1
			for i, p := range rows.parts {
				if i < last {
					if i == 0 {
						b.WriteString("WITH ")
					} else {
						b.WriteString(", ")
					}
					fmt.Fprintf(&b, "w%d AS (", i)
					p.sql(&b, 0, p.n)
					b.WriteString(") ")
				} else {
					p.sql(&b, 0, p.n)
				}
				args = append(args, p.args...)
			}
			return t.exec(b.String(), args...)
		}
	}
	const batch = 400
	for _, p := range rows.parts {
		for from := 0; from < p.n; from += batch {
			to := min(from+batch, p.n)
			var b strings.Builder
			p.sql(&b, from, to)
			if err := t.exec(b.String(), p.args[from*p.width:to*p.width]...); err != nil {
				return err
			}
		}
	}
	return nil
}

// patientsOf computes the patients whose compartment a resource version belongs to (see fhir.CompartmentParams).
func (t *Tx) patientsOf(typ, id string, res *fhir.Object, idx *fhir.Index) ([]string, error) {
	set := map[string]bool{}
	if typ == "Patient" {
		set[id] = true
	}
	params := fhir.CompartmentParams(typ)
	indirect := fhir.IndirectCompartment[typ]
	for _, r := range idx.Refs {
		if r.Type == "Patient" && contains(params, r.Param) {
			set[r.ID] = true
		}
		if indirect != "" && r.Param == indirect && r.Type != "" && r.Type != "Patient" {
			ps, err := t.patientsOfResource(r.Type, r.ID)
			if err != nil {
				return nil, err
			}
			for _, p := range ps {
				set[p] = true
			}
		}
	}
	if typ == "Binary" {
		if sc := res.Object("securityContext"); sc != nil {
			if rt, rid, ok := t.s.indexer.LocalReference(sc.String("reference")); ok {
				if rt == "Patient" {
					set[rid] = true
				} else {
					ps, err := t.patientsOfResource(rt, rid)
					if err != nil {
						return nil, err
					}
					for _, p := range ps {
						set[p] = true
					}
				}
			}
		}
	}
	restricted := fhir.Restricted(res)
	out := make([]string, 0, len(set))
	for p := range set {
		if restricted && !strings.HasPrefix(p, fhir.RestrictedPrefix) {
			p = fhir.RestrictedPrefix + p
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

func (t *Tx) patientsOfResource(typ, id string) ([]string, error) {
	return t.strings(`SELECT DISTINCT c.patient FROM compartment c JOIN resources x ON x.rid = c.rid WHERE x.type = ? AND x.id = ?`, typ, id)
}

// binariesReferenced returns the rids and ids of local Binaries a DocumentReference's attachments point at.
func (t *Tx) binariesReferenced(idx *fhir.Index) ([]int64, []string, error) {
	var ids []string
	for _, u := range idx.URIs {
		if u.Param != "location" {
			continue
		}
		if typ, id, ok := t.s.indexer.LocalReference(u.URI); ok && typ == "Binary" && !contains(ids, id) {
			ids = append(ids, id)
		}
	}
	var out []int64
	var found []string
	for _, id := range ids {
		var rid int64
		err := t.queryRow(t.s.d.rebind(`SELECT rid FROM resources WHERE type = 'Binary' AND id = ?`), id).Scan(&rid)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, nil, t.s.dbErr("reading", err)
		}
		out = append(out, rid)
		found = append(found, id)
	}
	return out, found, nil
}

// documentsReferencing returns, for each DocumentReference whose attachment points at Binary/id, its patients.
func (t *Tx) documentsReferencing(id string) (map[int64][]string, error) {
	pid := ParamID("DocumentReference", "location")
	urls := []string{"Binary/" + id}
	if t.s.indexer.Base != "" {
		urls = append(urls, t.s.indexer.Base+"/Binary/"+id)
	}
	rows, err := t.queryContext(t.s.d.rebind(`SELECT c.via, c.patient FROM compartment c
		WHERE c.via = c.rid AND c.rid IN (SELECT u.rid FROM idx_uri u WHERE u.pid = ? AND u.uri IN (?, ?))`), pid, urls[0], urls[len(urls)-1])
	if err != nil {
		return nil, t.s.dbErr("reading", err)
	}
	defer rows.Close()
	out := map[int64][]string{}
	for rows.Next() {
		var doc int64
		var p string
		if err := rows.Scan(&doc, &p); err != nil {
			return nil, err
		}
		out[doc] = append(out[doc], p)
	}
	return out, rows.Err()
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, e := range b {
		if !contains(out, e) {
			out = append(out, e)
		}
	}
	sort.Strings(out)
	return out
}

// joinPatients stores a patient list as " a b " so that LIKE '% a %' finds a member.
func joinPatients(ps []string) string {
	if len(ps) == 0 {
		return ""
	}
	return " " + strings.Join(ps, " ") + " "
}

func splitPatients(s string) []string { return strings.Fields(s) }
