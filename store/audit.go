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

// LogAudit writes a batch of records (the read log) in one transaction, a few hundred rows per statement.
func (s *Store) LogAudit(ctx context.Context, recs []AuditRecord) error {
	return s.InTx(ctx, func(t *Tx) error {
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
	})
}

// PendingAudit returns up to limit records not yet turned into AuditEvents, of one patient (or of all when
// patient is "*"), oldest first.
func (t *Tx) PendingAudit(patient string, limit int) ([]AuditRecord, error) {
	q := `SELECT id, ` + auditCols + ` FROM audit_log`
	var args []any
	if patient != "*" {
		q += ` WHERE patient = ?`
		args = append(args, patient)
	}
	q += ` ORDER BY id LIMIT ?`
	args = append(args, limit)
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

// DoneAudit removes records that became AuditEvents.
func (t *Tx) DoneAudit(ids []int64) error {
	for len(ids) > 0 {
		n := min(len(ids), 500)
		q := &sqlb{}
		q.w("DELETE FROM audit_log WHERE id IN (")
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
		ids = ids[n:]
	}
	return nil
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
