package handlers

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/store"
	"github.com/google/uuid"
)

// Audit (rights.md §9). Every access and change goes to a compact audit log: a change's record in the
// transaction that makes it; reads, searches, history and $everything through a batched writer (the request queues
// a record and goes on; the writer groups what arrived within a tenth of a second by who asked, the interaction and the
// patient, and writes it within a second, and at shutdown). The log rows become AuditEvent resources when someone
// asks for AuditEvents (a patient listing who accessed their record, staff, an accounting of disclosures): a FHIR
// AuditEvent per (agent, interaction, patient) group, with the resources as entities.
//
// The trade-off: writing one compact row per group instead of a whole indexed AuditEvent per read keeps the read
// path within a queue send; a crash of the process may lose the last second of read records, never a change's.

// Audit vocabulary.
const (
	systemAuditType    = "http://terminology.hl7.org/CodeSystem/audit-event-type"
	systemRestful      = "http://hl7.org/fhir/restful-interaction"
	systemObjectRole   = "http://terminology.hl7.org/CodeSystem/object-role"
	systemDCM          = "http://dicom.nema.org/resources/ontology/DCM"
	SystemAuditKind    = fhir.CanonicalBase + "/CodeSystem/audit-kind"
	AuditDisclosure    = "disclosure"
	auditMaxEntities   = 200
	auditChunk         = 50    // log rows converted per transaction when converting all of them
	auditBusy          = 100   // requests per converter tick (2 s) above which the server is too busy to convert
	auditHeavy         = 20000 // requests per tick above which it does not even split the journal
	auditJournalMax    = 256   // entries per journal row
	auditSplitMax      = 8000  // journal entries per tick the busy pace can split
	auditFlushInterval = 100 * time.Millisecond
)

// agentOf describes who asked: the person (fhirUser) and the app (client).
type agent struct {
	who, client string
	disclosure  bool // a backend system outside the provider: a disclosure (164.528)
}

func agentFrom(p *auth.Principal) agent {
	if p == nil {
		return agent{client: "carta"}
	}
	return agent{who: p.FHIRUser, client: p.ClientID, disclosure: actorOf(p).Role == rights.RoleSystem}
}

func (a agent) key() string { return a.who + "|" + a.client }

// auditEvent builds one AuditEvent.
func (s *Server) auditEvent(a agent, interaction, action string, start, end time.Time, patient string, refs []string, outcome string) *fhir.Object {
	sub := []any{coding(systemRestful, interaction, "")}
	if a.disclosure && action == "R" {
		sub = append(sub, coding(SystemAuditKind, AuditDisclosure, "Disclosure outside the provider"))
	}
	var agents []any
	person := &fhir.Object{}
	if a.who != "" {
		person.Set("who", &fhir.Object{Keys: []string{"reference"}, Vals: []any{a.who}})
	} else {
		person.Set("who", &fhir.Object{Keys: []string{"display"}, Vals: []any{"client " + a.client}})
	}
	person.Set("requestor", true)
	agents = append(agents, person)
	if a.client != "" && a.who != "" {
		app := &fhir.Object{}
		app.Set("type", &fhir.Object{Keys: []string{"coding"}, Vals: []any{[]any{coding(systemDCM, "110150", "Application")}}})
		app.Set("who", &fhir.Object{Keys: []string{"display"}, Vals: []any{a.client}})
		app.Set("requestor", false)
		agents = append(agents, app)
	}
	var entities []any
	if patient != "" {
		e := &fhir.Object{}
		e.Set("what", &fhir.Object{Keys: []string{"reference"}, Vals: []any{"Patient/" + patient}})
		e.Set("role", coding(systemObjectRole, "1", "Patient"))
		entities = append(entities, e)
	}
	for _, r := range refs {
		if r == "Patient/"+patient {
			continue
		}
		e := &fhir.Object{}
		e.Set("what", &fhir.Object{Keys: []string{"reference"}, Vals: []any{r}})
		e.Set("role", coding(systemObjectRole, "4", "Domain Resource"))
		entities = append(entities, e)
	}
	o := &fhir.Object{}
	o.Set("resourceType", "AuditEvent")
	o.Set("id", uuid.NewString())
	o.Set("type", coding(systemAuditType, "rest", "RESTful Operation"))
	o.Set("subtype", sub)
	o.Set("action", action)
	if !start.IsZero() {
		o.Set("period", &fhir.Object{Keys: []string{"start", "end"}, Vals: []any{fhir.FormatInstant(start), fhir.FormatInstant(end)}})
	}
	o.Set("recorded", fhir.FormatInstant(time.Now()))
	o.Set("outcome", outcome)
	o.Set("agent", agents)
	o.Set("source", &fhir.Object{Keys: []string{"observer"}, Vals: []any{&fhir.Object{Keys: []string{"display"}, Vals: []any{"Carta " + s.version}}}})
	if len(entities) > 0 {
		o.Set("entity", entities)
	}
	return o
}

func coding(system, code, display string) *fhir.Object {
	o := &fhir.Object{}
	o.Set("system", system)
	o.Set("code", code)
	if display != "" {
		o.Set("display", display)
	}
	return o
}

// auditChange is the store's Auditor: one log row per patient whose compartment the change is in (a shared
// resource: one without a patient), in the same transaction.
func (s *Server) auditChange(tx *store.Tx, st *store.Stored, action string, patients []string) error {
	p := auth.PrincipalFrom(tx.Context())
	a := agentFrom(p)
	interaction := map[string]string{"C": "create", "U": "update", "D": "delete"}[action]
	if len(patients) == 0 {
		patients = []string{""}
	}
	for _, pt := range patients {
		err := tx.LogAudit(store.AuditRecord{Start: time.Now(), Agent: a.who, Client: a.client, Interaction: interaction, Action: action,
			Patient: pt, Refs: []string{st.Type + "/" + st.ID}})
		if err != nil {
			return err
		}
	}
	return nil
}

// materializeAudit turns pending audit log rows of a patient ("*": all) into AuditEvent resources in tx, up to
// max rows (0: all of them), and says how many it converted.
// For one patient it first takes that patient's entries out of the read journal (takeFromJournal).
func (s *Server) materializeAudit(tx *store.Tx, patient string, max int) (int, error) {
	if patient != "*" {
		if err := takeFromJournal(tx, patient); err != nil {
			return 0, err
		}
	}
	done := 0
	for max == 0 || done < max {
		limit := 1000
		if max > 0 {
			limit = min(limit, max-done)
		}
		rows, err := tx.PendingAudit(patient, limit)
		if err != nil {
			return done, err
		}
		if len(rows) == 0 {
			return done, nil
		}
		type group struct {
			r    store.AuditRecord
			refs []string
		}
		groups := map[string]*group{}
		var order []string
		ids := make([]int64, 0, len(rows))
		for _, r := range rows {
			ids = append(ids, r.ID)
			k := strings.Join([]string{r.Agent, r.Client, r.Interaction, r.Action, r.Patient, strconv.FormatBool(r.Disclosure)}, "|")
			g := groups[k]
			if g == nil {
				g = &group{r: r}
				groups[k] = g
				order = append(order, k)
			}
			if r.Start.Before(g.r.Start) {
				g.r.Start = r.Start
			}
			if r.End.After(g.r.End) {
				g.r.End = r.End
			}
			g.refs = append(g.refs, r.Refs...)
		}
		for _, k := range order {
			g := groups[k]
			patient := g.r.Patient
			if strings.HasPrefix(patient, fhir.RestrictedPrefix) {
				patient = "" // the event joins the restricted compartment through its entities, not the patient's
			}
			refs := uniqStrings(g.refs)
			for len(refs) > 0 {
				n := min(len(refs), auditMaxEntities)
				ev := s.auditEvent(agent{who: g.r.Agent, client: g.r.Client, disclosure: g.r.Disclosure}, g.r.Interaction, g.r.Action, g.r.Start, g.r.End, patient, refs[:n], "0")
				if _, err := tx.Create("AuditEvent", ev, store.CreateOptions{ID: ev.String("id"), Trusted: true}, nil); err != nil {
					return done, err
				}
				refs = refs[n:]
			}
		}
		if err := tx.DoneAudit(ids); err != nil {
			return done, err
		}
		done += len(rows)
		if len(rows) < limit {
			return done, nil
		}
	}
	return done, nil
}

// materializeFor converts the audit log rows a search of AuditEvents may return: the caller's patient, the
// patient the query names, or all. A patient's rows (with their entries taken from the journal) are converted in
// one transaction: a patient's list is always complete.
// Converting everything after a heavy load can take minutes (an AuditEvent per patient per flush), so a search of
// all AuditEvents converts for at most auditSyncBudget and then answers with a warning if rows remain; the
// background converter goes on with them.
func (s *Server) materializeFor(ctx context.Context, acc *fhir.Access, vals map[string][]string) ([]fhir.Issue, error) {
	patient := acc.PatientOnly()
	if patient == "" {
		patient = "*"
		if ps := vals["patient"]; len(ps) == 1 && !strings.Contains(ps[0], ",") {
			patient = strings.TrimPrefix(ps[0], "Patient/")
		}
	}
	if patient != "*" {
		return nil, s.store.InTx(ctx, func(tx *store.Tx) error { _, err := s.materializeAudit(tx, patient, 0); return err })
	}
	deadline := time.Now().Add(auditSyncBudget)
	if err := s.convertLog(ctx, func(time.Duration) bool { return time.Now().Before(deadline) }, true); err != nil {
		return nil, err
	}
	left, err := s.store.AuditBacklog(ctx)
	if err != nil || left == 0 {
		return nil, err
	}
	return []fhir.Issue{{Severity: fhir.SeverityWarning, Code: fhir.IssueIncomplete, Diagnostics: fmt.Sprintf(
		"%d audit log rows (reads of a heavy load) are still being turned into AuditEvents in the background, so these results may miss them; "+
			"a search with patient=<id> is always complete", left)}}, nil
}

// convertLog splits the journal a row per transaction and, when convert is set, turns the split rows into
// AuditEvents, auditChunk rows per transaction; between transactions, pause (when set) may hold it back or stop
// it (false).
func (s *Server) convertLog(ctx context.Context, pause func(time.Duration) bool, convert bool) error {
	steps := []func(tx *store.Tx) (int, error){func(tx *store.Tx) (int, error) {
		split, err := splitJournal(tx)
		if split {
			return 1, err
		}
		return 0, err
	}}
	if convert {
		steps = append(steps, func(tx *store.Tx) (int, error) { return s.materializeAudit(tx, "*", auditChunk) })
	}
	for _, step := range steps {
		for {
			start := time.Now()
			var n int
			if err := s.store.InTx(ctx, func(tx *store.Tx) (err error) { n, err = step(tx); return err }); err != nil {
				return err
			}
			if n == 0 {
				break
			}
			if pause != nil && !pause(time.Since(start)) {
				return nil
			}
		}
	}
	return nil
}

// convertAudit works through the audit log in the background, a chunk per transaction, by how busy the server
// was since its last tick (two seconds):
//   - quiet (at most auditBusy requests): split the journal and turn the rows into AuditEvents, resting four times
//     as long as each chunk took (at most a fifth of the time);
//   - busy: only split the journal by patient (cheap: a row per patient read, no AuditEvent), resting thirty times
//     as long (about 3% of the time, some 4,000 reads a second on this VM's core): under any load short of saturation
//     of a real deployment the journal stays short and a patient's list quick however long the load lasts;
//   - saturated (more than auditHeavy requests, or more journal entries than the busy pace could split,
//     auditSplitMax): nothing; the journal grows by a row per agent per flush and the work resumes when the load
//     eases.
//
// A search of AuditEvents converts what it may return itself, so it never misses a record.
func (s *Server) convertAudit(l *auditLog) {
	done := l.done
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	last := s.requests.Load()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		n := s.requests.Load()
		load := n - last
		last = n
		entries := l.entries.Swap(0)
		if load > auditHeavy || entries > auditSplitMax {
			continue // splitting at the busy pace could not keep up: wait for the load to ease
		}
		quiet := load <= auditBusy
		rest := 4
		if !quiet {
			rest = 30
		}
		deadline := time.Now().Add(2 * time.Second)
		err := s.convertLog(context.Background(), func(took time.Duration) bool {
			if quiet && s.requests.Load()-last > auditBusy || time.Now().After(deadline) {
				return false // look at the load again
			}
			select {
			case <-done:
				return false
			case <-time.After(time.Duration(rest) * took):
				return true
			}
		}, quiet)
		if err != nil {
			s.log.Error("audit: converting the log to AuditEvents", "err", err)
		}
	}
}

// auditSyncBudget is how long a search of all AuditEvents converts before answering (a variable for tests).
var auditSyncBudget = 2 * time.Second

// auditRec is a read waiting for the batched writer.
type auditRec struct {
	at          time.Time
	agent       agent
	interaction string
	refs        []string
	keys        []int64 // the stored resources' keys, parallel to refs (0: look the patients up by reference)
}

// auditLog is the batched writer of read records.
type auditLog struct {
	s       *Server
	entries atomic.Int64 // journal entries written since the converter last looked
	mu      sync.Mutex
	room    *sync.Cond // the writer took the pending records
	pending []auditRec
	closed  bool
	kick    chan struct{}
	flushCh chan chan struct{}
	done    chan struct{}
	once    sync.Once
}

// auditMaxPending is how many reads may wait for the writer before a request waits for it.
const auditMaxPending = 1 << 16

func newAuditLog(s *Server) *auditLog {
	l := &auditLog{s: s, kick: make(chan struct{}, 1), flushCh: make(chan chan struct{}), done: make(chan struct{})}
	l.room = sync.NewCond(&l.mu)
	go l.run()
	go s.convertAudit(l)
	return l
}

// record queues a read: an append under a lock, no wake-up of the writer (which takes the queue on its ticker).
// It waits (never drops) when the writer is that far behind.
func (l *auditLog) record(r auditRec) {
	l.mu.Lock()
	for len(l.pending) >= auditMaxPending && !l.closed {
		l.room.Wait()
	}
	if !l.closed {
		l.pending = append(l.pending, r)
		if len(l.pending) == auditMaxPending {
			select {
			case l.kick <- struct{}{}:
			default:
			}
		}
	}
	l.mu.Unlock()
}

// Flush writes everything queued so far.
func (l *auditLog) Flush() {
	ch := make(chan struct{})
	select {
	case l.flushCh <- ch:
		<-ch
	case <-l.done:
	}
}

func (l *auditLog) close() {
	l.once.Do(func() {
		l.Flush()
		l.mu.Lock()
		l.closed = true
		l.room.Broadcast()
		l.mu.Unlock()
		close(l.done)
	})
}

func (l *auditLog) run() {
	t := time.NewTicker(auditFlushInterval)
	defer t.Stop()
	var buf []auditRec // taken from the queue, not yet written (kept when a write fails)
	take := func() {
		l.mu.Lock()
		if len(buf) == 0 {
			buf, l.pending = l.pending, buf[:0]
		} else {
			buf = append(buf, l.pending...)
			l.pending = l.pending[:0]
		}
		l.room.Broadcast()
		l.mu.Unlock()
	}
	for {
		select {
		case <-t.C:
		case <-l.kick:
		case ch := <-l.flushCh:
			take()
			buf = l.write(buf)
			close(ch)
			continue
		case <-l.done:
			return
		}
		take()
		buf = l.write(buf)
	}
}

// write appends one journal row per (agent, interaction) of what arrived since the last flush, naming each
// resource read with the patients whose compartments held it at the time ("Observation/7=p1"). Splitting the
// journal by patient is left to splitJournal, off the request path.
func (l *auditLog) write(buf []auditRec) []auditRec {
	if len(buf) == 0 {
		return buf
	}
	s := l.s
	ctx := context.Background()
	var keys []int64
	var byRef []string
	for _, r := range buf {
		for i, k := range r.keys {
			switch {
			case strings.HasPrefix(r.refs[i], "Patient/"): // a Patient's compartment is itself alone
			case k != 0:
				keys = append(keys, k)
			default:
				byRef = append(byRef, r.refs[i])
			}
		}
	}
	pk, err := s.store.PatientsOfKeys(ctx, keys)
	if err != nil {
		s.log.Error("audit: finding the patients of read records", "err", err)
		return buf // kept for the next flush
	}
	pr, err := s.store.PatientsOf(ctx, uniqStrings(byRef))
	if err != nil {
		s.log.Error("audit: finding the patients of read records", "err", err)
		return buf
	}
	type group struct {
		rec  store.AuditRecord
		seen map[string]bool
	}
	groups := map[string]*group{}
	var order []string
	for _, r := range buf {
		k := r.agent.key() + "|" + r.interaction
		g := groups[k]
		if g == nil {
			g = &group{rec: store.AuditRecord{Start: r.at, End: r.at, Agent: r.agent.who, Client: r.agent.client, Interaction: r.interaction,
				Action: "R", Patient: store.AuditJournal, Disclosure: r.agent.disclosure}, seen: map[string]bool{}}
			groups[k] = g
			order = append(order, k)
		}
		g.rec.End = r.at
		for i, ref := range r.refs {
			if g.seen[ref] {
				continue
			}
			g.seen[ref] = true
			var patients []string
			switch {
			case strings.HasPrefix(ref, "Patient/"):
				patients = []string{ref[len("Patient/"):]}
			case r.keys[i] != 0:
				patients = pk[r.keys[i]]
			default:
				patients = pr[ref]
			}
			g.rec.Refs = append(g.rec.Refs, ref+"="+strings.Join(patients, ","))
		}
	}
	// Journal rows of at most auditJournalMax entries: splitting one later is then a short transaction.
	recs := make([]store.AuditRecord, 0, len(order))
	for _, k := range order {
		rec := groups[k].rec
		for len(rec.Refs) > auditJournalMax {
			part := rec
			part.Refs = rec.Refs[:auditJournalMax]
			recs = append(recs, part)
			rec.Refs = rec.Refs[auditJournalMax:]
		}
		recs = append(recs, rec)
	}
	if err := s.store.LogAudit(ctx, recs); err != nil {
		s.log.Error("audit: writing read records", "err", err, "records", len(recs))
		return buf
	}
	written := 0
	for _, r := range recs {
		written += len(r.Refs)
	}
	l.entries.Add(int64(written))
	return buf[:0]
}

// takeFromJournal writes a patient's entries of the read journal as log rows of their own and notes that they
// were taken, so the journal rows need not be split for one patient's list (a scan of the journal's text,
// which stays cheap where splitting it after a heavy load would write a row per patient read).
func takeFromJournal(tx *store.Tx, patient string) error {
	rows, err := tx.JournalFor(patient)
	if err != nil || len(rows) == 0 {
		return err
	}
	var recs []store.AuditRecord
	for _, j := range rows {
		var refs []string
		for _, e := range j.Refs {
			ref, ps, _ := strings.Cut(e, "=")
			for p := range strings.SplitSeq(ps, ",") {
				if p == patient {
					refs = append(refs, ref)
					break
				}
			}
		}
		taken, err := tx.TakeFromJournal(patient, j.ID)
		if err != nil {
			return err
		}
		if taken && len(refs) > 0 {
			r := j
			r.ID, r.Patient, r.Refs = 0, patient, refs
			recs = append(recs, r)
		}
	}
	return tx.LogAuditRows(recs)
}

// splitJournal splits the oldest journal row into one log row per (agent, interaction, patient) — the index by
// which a patient's AuditEvents are built — leaving out the patients already taken from it; it reports whether
// there was a row to split.
func splitJournal(tx *store.Tx) (bool, error) {
	rows, err := tx.PendingAudit(store.AuditJournal, 1)
	if err != nil || len(rows) == 0 {
		return false, err
	}
	j := rows[0]
	taken, err := tx.JournalTaken(j.ID)
	if err != nil {
		return false, err
	}
	byPatient := map[string]int{}
	var recs []store.AuditRecord
	for _, e := range j.Refs {
		ref, ps, _ := strings.Cut(e, "=")
		pts := strings.Split(ps, ",")
		if ps == "" {
			pts = []string{""} // a shared resource, in no patient's compartment
		}
		for _, p := range pts {
			if taken[p] {
				continue
			}
			i, ok := byPatient[p]
			if !ok {
				i = len(recs)
				byPatient[p] = i
				r := j
				r.ID, r.Patient, r.Refs = 0, p, nil
				recs = append(recs, r)
			}
			recs[i].Refs = append(recs[i].Refs, ref)
		}
	}
	if err := tx.LogAuditRows(recs); err != nil {
		return false, err
	}
	return true, tx.DoneAudit([]int64{j.ID})
}

func uniqStrings(l []string) []string {
	seen := make(map[string]bool, len(l))
	out := l[:0:0]
	for _, s := range l {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// auditRead queues a read of stored resources (reads of AuditEvents are not audited: a patient listing who saw
// their record would otherwise grow it).
func (s *Server) auditRead(ctx context.Context, interaction string, sts ...*store.Stored) {
	if s.auditLog == nil {
		return
	}
	var refs []string
	var keys []int64
	for _, st := range sts {
		if st != nil && st.Type != "AuditEvent" {
			refs = append(refs, st.Type+"/"+st.ID)
			keys = append(keys, st.Key())
		}
	}
	if len(refs) > 0 {
		s.auditLog.record(auditRec{at: time.Now(), agent: agentFrom(auth.PrincipalFrom(ctx)), interaction: interaction, refs: refs, keys: keys})
	}
}

// auditRefs queues a read of resources known by reference only (history entries).
func (s *Server) auditRefs(ctx context.Context, interaction string, all []string) {
	if s.auditLog == nil {
		return
	}
	var refs []string
	for _, r := range all {
		if !strings.HasPrefix(r, "AuditEvent/") {
			refs = append(refs, r)
		}
	}
	if len(refs) > 0 {
		s.auditLog.record(auditRec{at: time.Now(), agent: agentFrom(auth.PrincipalFrom(ctx)), interaction: interaction, refs: refs, keys: make([]int64, len(refs))})
	}
}

// FlushAudit writes the queued read records now (tests; shutdown does it too).
func (s *Server) FlushAudit() {
	if s.auditLog != nil {
		s.auditLog.Flush()
	}
}

// Close flushes the audit of reads and stops its writer. Call it after the HTTP server has stopped.
func (s *Server) Close() {
	if s.auditLog != nil {
		s.auditLog.close()
	}
}
