package store

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/carta-fhir/carta/fhir"
)

// Gone is the error for a deleted resource.
func Gone(typ, id string) *fhir.Error {
	return fhir.Errorf(http.StatusGone, fhir.IssueDeleted, "%s/%s has been deleted", typ, id)
}

// Read returns the current version of a resource. It returns a 404 *fhir.Error when the resource does not exist
// or acc may not see it (a patient never learns that another patient's resource exists), and 410 when it was
// deleted.
func (s *Store) Read(ctx context.Context, typ, id string, acc *fhir.Access) (*Stored, error) {
	if !acc.Visible(typ) {
		return nil, fhir.NotFound(typ, id)
	}
	if s.cache != nil {
		return s.readCached(ctx, typ, id, acc)
	}
	st := &Stored{Type: typ, ID: id}
	var upd, del int64
	p := acc.PatientOnly()
	var err error
	inCompartment := true
	if p == "" || fhir.Shared(typ) {
		err = s.readStmt.QueryRowContext(ctx, typ, id).Scan(&st.rid, &st.Version, &upd, &del, &st.Raw)
	} else {
		err = s.readPat.QueryRowContext(ctx, p, typ, id).Scan(&st.rid, &st.Version, &upd, &del, &st.Raw, &inCompartment)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fhir.NotFound(typ, id)
	}
	if err != nil {
		return nil, s.dbErr("reading", err)
	}
	st.Updated, st.Deleted = fromMicros(upd), del != 0
	if st.Deleted {
		if p != "" && !fhir.Shared(typ) {
			ok, err := s.versionVisible(ctx, st.rid, st.Version, p)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, fhir.NotFound(typ, id)
			}
		}
		return nil, Gone(typ, id)
	}
	if !inCompartment {
		return nil, fhir.NotFound(typ, id)
	}
	if g := acc.ReadGrant(typ); len(g.Filters) > 0 {
		ok, err := s.matchesGrant(ctx, st.rid, typ, g, acc)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fhir.NotFound(typ, id)
		}
	}
	return st, nil
}

func (s *Store) readCached(ctx context.Context, typ, id string, acc *fhir.Access) (*Stored, error) {
	key := cacheKey(typ, id)
	e, ok := s.cache.get(typ, id)
	if !ok {
		epoch := s.cache.epoch(key)
		var err error
		e, err = s.load(ctx, typ, id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fhir.NotFound(typ, id)
		}
		if err != nil {
			return nil, s.dbErr("reading", err)
		}
		s.cache.fill(key, e, epoch)
	}
	p := acc.PatientOnly()
	limited := p != "" && !fhir.Shared(typ)
	if limited && !contains(e.patients, p) {
		return nil, fhir.NotFound(typ, id)
	}
	if e.st.Deleted {
		return nil, Gone(typ, id)
	}
	if g := acc.ReadGrant(typ); len(g.Filters) > 0 {
		ok, err := s.matchesGrant(ctx, e.st.rid, typ, g, acc)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fhir.NotFound(typ, id)
		}
	}
	return e.st, nil
}

// versionVisible reports whether a version's recorded compartment includes patient.
func (s *Store) versionVisible(ctx context.Context, rid, version int64, patient string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM history WHERE rid = ? AND version = ? AND patients LIKE ?`),
		rid, version, "% "+patient+" %").Scan(&n)
	if err != nil {
		return false, s.dbErr("reading", err)
	}
	return n > 0, nil
}

// matchesGrant reports whether the current version of a resource satisfies a scope's filters.
func (s *Store) matchesGrant(ctx context.Context, rid int64, typ string, g fhir.Grant, acc *fhir.Access) (bool, error) {
	return s.matchesGrantQ(ctx, s.db, rid, typ, g, acc)
}

func (s *Store) matchesGrantQ(ctx context.Context, db querier, rid int64, typ string, g fhir.Grant, acc *fhir.Access) (bool, error) {
	bd := &builder{s: s, acc: acc}
	q := &sqlb{}
	q.w("SELECT COUNT(*) FROM resources r WHERE r.rid = ")
	q.arg(rid)
	if err := bd.grantFilter(q, "r", typ, g); err != nil {
		return false, err
	}
	var n int
	if err := db.QueryRowContext(ctx, s.d.rebind(q.b.String()), q.args...).Scan(&n); err != nil {
		return false, s.dbErr("reading", err)
	}
	return n > 0, nil
}

// VRead returns one version of a resource. A deleted version gives 410; an unknown version 404.
func (s *Store) VRead(ctx context.Context, typ, id string, version int64, acc *fhir.Access) (*Stored, error) {
	return s.vread(ctx, s.db, typ, id, version, acc)
}

// VRead returns one version of a resource inside the transaction.
func (t *Tx) VRead(typ, id string, version int64, acc *fhir.Access) (*Stored, error) {
	return t.s.vread(t.ctx, txQuerier{t}, typ, id, version, acc)
}

func (s *Store) vread(ctx context.Context, db querier, typ, id string, version int64, acc *fhir.Access) (*Stored, error) {
	if !acc.Visible(typ) {
		return nil, fhir.NotFound(typ, id)
	}
	st := &Stored{Type: typ, ID: id, Version: version}
	var upd, del int64
	var patients string
	err := db.QueryRowContext(ctx, s.d.rebind(`SELECT h.rid, h.updated, h.deleted, h.method, h.patients, h.raw FROM history h
		JOIN resources r ON r.rid = h.rid WHERE r.type = ? AND r.id = ? AND h.version = ?`), typ, id, version).
		Scan(&st.rid, &upd, &del, &st.Method, &patients, &st.Raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fhir.Errorf(http.StatusNotFound, fhir.IssueNotFound, "%s/%s has no version %d", typ, id, version)
	}
	if err != nil {
		return nil, s.dbErr("reading", err)
	}
	if ok, err := s.historyVisible(ctx, db, st.rid, typ, patients, acc); err != nil || !ok {
		if err != nil {
			return nil, err
		}
		return nil, fhir.Errorf(http.StatusNotFound, fhir.IssueNotFound, "%s/%s has no version %d", typ, id, version)
	}
	st.Updated, st.Deleted = fromMicros(upd), del != 0
	if st.Deleted {
		return nil, fhir.Errorf(http.StatusGone, fhir.IssueDeleted, "version %d of %s/%s is a deletion", version, typ, id)
	}
	return st, nil
}

// historyVisible decides whether a patient-limited caller may see a history row: shared types always, Binary by
// its current compartment, others by the compartment recorded with that version.
func (s *Store) historyVisible(ctx context.Context, db querier, rid int64, typ, patients string, acc *fhir.Access) (bool, error) {
	p := acc.PatientOnly()
	if p == "" || fhir.Shared(typ) {
		return true, nil
	}
	if typ == "Binary" {
		var n int
		err := db.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM compartment WHERE rid = ? AND patient = ?`), rid, p).Scan(&n)
		if err != nil {
			return false, s.dbErr("reading", err)
		}
		return n > 0, nil
	}
	return contains(splitPatients(patients), p), nil
}

// HistoryOptions select part of a history.
type HistoryOptions struct {
	Since  time.Time // only versions updated at or after
	At     time.Time // only versions current at that instant (not zero)
	Count  int
	Cursor string
}

// HistoryPage is one page of a history, newest first.
type HistoryPage struct {
	Entries []*Stored
	Next    string
	Total   int
}

type historyCursor struct {
	Updated int64 `json:"u"`
	RID     int64 `json:"r"`
	Version int64 `json:"v"`
}

// History returns versions of one resource (typ and id set), of one type (id ""), or of the whole server (typ ""),
// newest first, including deletions. Types the caller may not read, or reads only through scope filters, are
// left out; a patient-limited caller sees only versions recorded in its patient's compartment.
func (s *Store) History(ctx context.Context, typ, id string, opt HistoryOptions, acc *fhir.Access) (*HistoryPage, error) {
	if opt.Count <= 0 {
		opt.Count = fhir.DefaultCount
	}
	opt.Count = min(opt.Count, fhir.MaxCount)
	q := &sqlb{}
	q.w("SELECT h.rid, h.type, h.id, h.version, h.updated, h.deleted, h.method, h.patients, h.raw FROM history h WHERE 1 = 1")
	if id != "" {
		var rid int64
		err := s.db.QueryRowContext(ctx, s.d.rebind(`SELECT rid FROM resources WHERE type = ? AND id = ?`), typ, id).Scan(&rid)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fhir.NotFound(typ, id)
		}
		if err != nil {
			return nil, s.dbErr("reading", err)
		}
		q.w(" AND h.rid = ")
		q.arg(rid)
	} else if typ != "" {
		q.w(" AND h.type = ")
		q.arg(typ)
	}
	var types []string
	for _, t := range fhir.R4().ResourceTypes() {
		if (typ == "" || t == typ) && acc.Visible(t) {
			if g := acc.ReadGrant(t); g.Allowed && len(g.Filters) == 0 {
				types = append(types, t)
			}
		}
	}
	if len(types) == 0 {
		if id != "" {
			return nil, fhir.NotFound(typ, id)
		}
		return &HistoryPage{}, nil
	}
	if typ == "" && len(types) < len(fhir.R4().ResourceTypes()) {
		q.w(" AND h.type IN ")
		q.list(types)
	}
	if p := acc.PatientOnly(); p != "" {
		// Binary versions are judged by the current compartment below; shared types are not limited.
		q.w(" AND (h.patients LIKE ")
		q.arg("% " + p + " %")
		q.w(" OR h.type = 'Binary' OR h.type IN ")
		q.list(sharedList())
		q.w(")")
	}
	if !opt.Since.IsZero() {
		q.w(" AND h.updated >= ")
		q.arg(micros(opt.Since))
	}
	if !opt.At.IsZero() {
		// The version current at At: the newest one updated at or before At.
		q.w(" AND h.updated <= ")
		q.arg(micros(opt.At))
		q.w(" AND NOT EXISTS (SELECT 1 FROM history n WHERE n.rid = h.rid AND n.version > h.version AND n.updated <= ")
		q.arg(micros(opt.At))
		q.w(")")
	}
	if opt.Cursor != "" {
		var c historyCursor
		if err := decodeJSONCursor(opt.Cursor, &c); err != nil {
			return nil, err
		}
		q.w(" AND (h.updated < ")
		q.arg(c.Updated)
		q.w(" OR (h.updated = ")
		q.arg(c.Updated)
		q.w(" AND (h.rid < ")
		q.arg(c.RID)
		q.w(" OR (h.rid = ")
		q.arg(c.RID)
		q.w(" AND h.version < ")
		q.arg(c.Version)
		q.w("))))")
	}
	q.w(" ORDER BY h.updated DESC, h.rid DESC, h.version DESC LIMIT ")
	q.arg(opt.Count + 1)
	rows, err := s.db.QueryContext(ctx, s.d.rebind(q.b.String()), q.args...)
	if err != nil {
		return nil, s.dbErr("reading history", err)
	}
	type hrow struct {
		st       *Stored
		patients string
	}
	var got []hrow
	for rows.Next() {
		st := &Stored{}
		var upd, del int64
		var patients string
		if err := rows.Scan(&st.rid, &st.Type, &st.ID, &st.Version, &upd, &del, &st.Method, &patients, &st.Raw); err != nil {
			rows.Close()
			return nil, s.dbErr("reading history", err)
		}
		st.Updated, st.Deleted = fromMicros(upd), del != 0
		got = append(got, hrow{st, patients})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, s.dbErr("reading history", err)
	}
	page := &HistoryPage{Total: -1}
	more := len(got) > opt.Count
	if more {
		got = got[:opt.Count]
		last := got[len(got)-1].st
		page.Next = encodeJSONCursor(historyCursor{Updated: micros(last.Updated), RID: last.rid, Version: last.Version})
	}
	for _, g := range got {
		if g.st.Type == "Binary" {
			ok, err := s.historyVisible(ctx, s.db, g.st.rid, g.st.Type, g.patients, acc)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
		}
		page.Entries = append(page.Entries, g.st)
	}
	if id != "" && acc.PatientOnly() != "" && len(page.Entries) == 0 && opt.Cursor == "" && opt.Since.IsZero() && opt.At.IsZero() {
		return nil, fhir.NotFound(typ, id)
	}
	if opt.Cursor == "" && !more {
		page.Total = len(page.Entries)
	}
	return page, nil
}

// Create stores a new resource in its own transaction (see Tx.Create).
func (s *Store) Create(ctx context.Context, typ string, res *fhir.Object, opt CreateOptions, acc *fhir.Access) (*WriteResult, error) {
	var out *WriteResult
	err := s.InTx(ctx, func(t *Tx) error {
		var err error
		out, err = t.Create(typ, res, opt, acc)
		return err
	})
	return out, err
}

// Update stores a new version in its own transaction (see Tx.Update).
func (s *Store) Update(ctx context.Context, typ, id string, res *fhir.Object, opt UpdateOptions, acc *fhir.Access) (*WriteResult, error) {
	var out *WriteResult
	err := s.InTx(ctx, func(t *Tx) error {
		var err error
		out, err = t.Update(typ, id, res, opt, acc)
		return err
	})
	return out, err
}

// Delete deletes a resource in its own transaction (see Tx.Delete).
func (s *Store) Delete(ctx context.Context, typ, id string, opt DeleteOptions, acc *fhir.Access) (*WriteResult, error) {
	var out *WriteResult
	err := s.InTx(ctx, func(t *Tx) error {
		var err error
		out, err = t.Delete(typ, id, opt, acc)
		return err
	})
	return out, err
}

// Read returns the current version of a resource as seen inside the transaction.
func (t *Tx) Read(typ, id string, acc *fhir.Access) (*Stored, error) {
	cur, patients, err := t.current(typ, id)
	if err != nil {
		return nil, err
	}
	if cur == nil || !acc.Visible(typ) {
		return nil, fhir.NotFound(typ, id)
	}
	if p := acc.PatientOnly(); p != "" && !fhir.Shared(typ) && !contains(patients, p) {
		return nil, fhir.NotFound(typ, id)
	}
	if cur.Deleted {
		return nil, Gone(typ, id)
	}
	if g := acc.ReadGrant(typ); len(g.Filters) > 0 {
		ok, err := t.s.matchesGrantQ(t.ctx, txQuerier{t}, cur.rid, typ, g, acc)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fhir.NotFound(typ, id)
		}
	}
	return cur, nil
}

func encodeJSONCursor(v any) string {
	return cursorEncoding.EncodeToString(mustJSON(v))
}

func decodeJSONCursor(s string, v any) error {
	b, err := cursorEncoding.DecodeString(s)
	if err == nil {
		err = jsonUnmarshal(b, v)
	}
	if err != nil {
		return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "_cursor", "the paging cursor is not valid; start again from the first page")
	}
	return nil
}

// ParseVersion parses a version id from a URL or If-Match header.
func ParseVersion(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n > 0
}

// PatientsOf returns, for each reference Type/id, the patients whose compartment the resource is in (restricted
// resources under fhir.RestrictedPrefix); references to nothing, or to shared resources, are absent.
func (s *Store) PatientsOf(ctx context.Context, refs []string) (map[string][]string, error) {
	out := map[string][]string{}
	var valid []string
	for _, r := range refs {
		if _, _, _, ok := fhir.SplitReference(r); ok {
			valid = append(valid, r)
		}
	}
	refs = valid
	for len(refs) > 0 {
		n := min(len(refs), 200)
		batch := refs[:n]
		refs = refs[n:]
		q := &sqlb{}
		q.w("SELECT x.type, x.id, c.patient FROM compartment c JOIN resources x ON x.rid = c.rid WHERE ")
		for i, r := range batch {
			typ, id, _, _ := fhir.SplitReference(r)
			if i > 0 {
				q.w(" OR ")
			}
			q.w("(x.type = ")
			q.arg(typ)
			q.w(" AND x.id = ")
			q.arg(id)
			q.w(")")
		}
		rows, err := s.db.QueryContext(ctx, s.d.rebind(q.b.String()), q.args...)
		if err != nil {
			return nil, s.dbErr("reading compartments", err)
		}
		for rows.Next() {
			var typ, id, p string
			if err := rows.Scan(&typ, &id, &p); err != nil {
				rows.Close()
				return nil, s.dbErr("reading compartments", err)
			}
			out[typ+"/"+id] = append(out[typ+"/"+id], p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
