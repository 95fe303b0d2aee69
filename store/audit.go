package store

import (
	"context"
	"strings"
	"time"
)

// AuditRecord is one line of the audit log: who (agent, the app's client id) did what (a RESTful interaction,
// action C/R/U/D/E) to which resources of one patient (empty: no patient, or several kept apart) and when.
// Records are compact rows, written in the transaction of a change or by the batched writer of reads; they become
// AuditEvent resources when someone asks for them (MaterializeAudit).
type AuditRecord struct {
	ID                  int64
	Start, End          time.Time
	Agent, Client       string
	Interaction, Action string
	Patient             string
	Refs                []string
	Disclosure          bool
}

const auditCols = "start_at, end_at, agent, client, interaction, action, patient, refs, disclosure"

func auditArgs(r AuditRecord) []any {
	d := 0
	if r.Disclosure {
		d = 1
	}
	end := r.End
	if end.IsZero() {
		end = r.Start
	}
	return []any{micros(r.Start), micros(end), r.Agent, r.Client, r.Interaction, r.Action, r.Patient, strings.Join(r.Refs, " "), d}
}

// LogAudit records a change in the transaction that makes it.
func (t *Tx) LogAudit(r AuditRecord) error {
	return t.exec(`INSERT INTO audit_log (`+auditCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, auditArgs(r)...)
}

// AuditJournal is the Patient value of a journal row: the reads of one flush by one agent, each resource with
// the patients whose compartments held it ("Observation/7=p1,p2"), not yet split by patient.
const AuditJournal = "#"

// LogAudit writes a batch of records (the read journal) in one transaction.
func (s *Store) LogAudit(ctx context.Context, recs []AuditRecord) error {
	return s.InTx(ctx, func(t *Tx) error { return t.LogAuditRows(recs) })
}

// LogAuditRows writes records in t, a few hundred rows per statement.
func (t *Tx) LogAuditRows(recs []AuditRecord) error {
	for len(recs) > 0 {
		n := min(len(recs), 200)
		var b strings.Builder
		b.WriteString(`INSERT INTO audit_log (` + auditCols + `) VALUES `)
		args := make([]any, 0, n*9)
		for i, r := range recs[:n] {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, auditArgs(r)...)
		}
		if err := t.exec(b.String(), args...); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// PendingAudit returns up to limit records not yet turned into AuditEvents, of one patient (or of all patients
// when patient is "*"; journal rows when it is AuditJournal), oldest first.
func (t *Tx) PendingAudit(patient string, limit int) ([]AuditRecord, error) {
	q := `SELECT id, ` + auditCols + ` FROM audit_log`
	var args []any
	if patient == "*" {
		q += ` WHERE patient <> ?`
		args = append(args, AuditJournal)
	} else {
		q += ` WHERE patient = ?`
		args = append(args, patient)
	}
	q += ` ORDER BY id LIMIT ?` + t.s.forUpdate()
	args = append(args, limit)
	return t.auditRows(q, args...)
}

// forUpdate locks the audit rows a transaction reads to convert (PostgreSQL; SQLite's writer is alone anyway):
// two converters — a search and the background, or two replicas — then never turn the same rows into AuditEvents
// twice; the second waits and finds them gone.
func (s *Store) forUpdate() string {
	if s.d == dialectPostgres {
		return " FOR UPDATE"
	}
	return ""
}

func (t *Tx) auditRows(q string, args ...any) ([]AuditRecord, error) {
	rows, err := t.queryContext(t.s.d.rebind(q), args...)
	if err != nil {
		return nil, t.s.dbErr("reading the audit log", err)
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		var r AuditRecord
		var start, end int64
		var refs string
		var d int
		if err := rows.Scan(&r.ID, &start, &end, &r.Agent, &r.Client, &r.Interaction, &r.Action, &r.Patient, &refs, &d); err != nil {
			return nil, t.s.dbErr("reading the audit log", err)
		}
		r.Start, r.End, r.Refs, r.Disclosure = fromMicros(start), fromMicros(end), strings.Fields(refs), d != 0
		out = append(out, r)
	}
	return out, rows.Err()
}

// AuditBacklog counts the audit log rows not yet turned into AuditEvents (journal rows count once each).
func (s *Store) AuditBacklog(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_log`).Scan(&n); err != nil {
		return 0, s.dbErr("reading the audit log", err)
	}
	return n, nil
}

// DoneAudit removes records that became AuditEvents (and, for journal rows, the patients taken out of them).
func (t *Tx) DoneAudit(ids []int64) error {
	for len(ids) > 0 {
		n := min(len(ids), 500)
		for _, stmt := range []string{"DELETE FROM audit_log WHERE id IN (", "DELETE FROM audit_done WHERE journal IN ("} {
			q := &sqlb{}
			q.w(stmt)
			for i, id := range ids[:n] {
				if i > 0 {
					q.w(", ")
				}
				q.arg(id)
			}
			q.w(")")
			if err := t.exec(q.b.String(), q.args...); err != nil {
				return err
			}
		}
		ids = ids[n:]
	}
	return nil
}

// JournalFor returns the journal rows that may name patient (their text contains it) and that it was not yet
// taken out of. The caller checks each entry.
func (t *Tx) JournalFor(patient string) ([]AuditRecord, error) {
	return t.auditRows(`SELECT id, `+auditCols+` FROM audit_log a WHERE patient = ? AND refs LIKE ?
		AND NOT EXISTS (SELECT 1 FROM audit_done d WHERE d.journal = a.id AND d.patient = ?) ORDER BY id`+t.s.forUpdate(),
		AuditJournal, "%"+patient+"%", patient)
}

// TakeFromJournal claims a patient's entries of a journal row: true when this transaction is the first to, so
// the caller writes them as rows of their own; false when another already did (two requests of one patient at
// once).
func (t *Tx) TakeFromJournal(patient string, id int64) (bool, error) {
	res, err := t.execContext(t.s.d.rebind(`INSERT INTO audit_done (journal, patient) VALUES (?, ?) ON CONFLICT DO NOTHING`), id, patient)
	if err != nil {
		return false, t.s.dbErr("writing the audit log", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// JournalTaken returns the patients already taken out of a journal row.
func (t *Tx) JournalTaken(id int64) (map[string]bool, error) {
	rows, err := t.queryContext(t.s.d.rebind(`SELECT patient FROM audit_done WHERE journal = ?`), id)
	if err != nil {
		return nil, t.s.dbErr("reading the audit log", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, t.s.dbErr("reading the audit log", err)
		}
		out[p] = true
	}
	return out, rows.Err()
}

// PatientsOfKeys returns the patients whose compartments hold each stored resource (by Stored.Key).
func (s *Store) PatientsOfKeys(ctx context.Context, keys []int64) (map[int64][]string, error) {
	out := map[int64][]string{}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		q := &sqlb{}
		q.w("SELECT rid, patient FROM compartment WHERE rid IN (")
		for i, k := range keys[:n] {
			if i > 0 {
				q.w(", ")
			}
			q.arg(k)
		}
		q.w(")")
		keys = keys[n:]
		rows, err := s.db.QueryContext(ctx, s.d.rebind(q.b.String()), q.args...)
		if err != nil {
			return nil, s.dbErr("reading compartments", err)
		}
		for rows.Next() {
			var rid int64
			var p string
			if err := rows.Scan(&rid, &p); err != nil {
				rows.Close()
				return nil, s.dbErr("reading compartments", err)
			}
			if !contains(out[rid], p) {
				out[rid] = append(out[rid], p)
			}
		}
		rows.Close()
	}
	return out, nil
}

// Key is the store's internal key of a resource (stable across versions), for batch lookups.
func (s *Stored) Key() int64 { return s.rid }
