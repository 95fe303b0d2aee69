package handlers

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/store"
	"github.com/google/uuid"
)

// Audit (rights.md §9). Every access and change goes to a compact audit log: a change's record in the
// transaction that makes it; reads, searches, history and $everything through a batched writer (the request queues
// a record and goes on; the writer groups what arrived within half a second by who asked, the interaction and the
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
	auditFlushInterval = 500 * time.Millisecond
	auditMaxEntities   = 200
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

// materializeAudit turns the pending audit log rows of a patient ("*": all) into AuditEvent resources, in the
// transaction of the search that wants them.
func (s *Server) materializeAudit(tx *store.Tx, patient string) error {
	for round := 0; round < 20; round++ { // at most 20,000 rows per call; the background converter does the rest

		rows, err := tx.PendingAudit(patient, 1000)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
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
					return err
				}
				refs = refs[n:]
			}
		}
		if err := tx.DoneAudit(ids); err != nil {
			return err
		}
		if len(rows) < 1000 {
			return nil
		}
	}
	return nil
}

// materializeFor converts the audit log rows a search of AuditEvents may return: the caller's patient, the
// patient the query names, or all.
func (s *Server) materializeFor(ctx context.Context, acc *fhir.Access, vals map[string][]string) error {
	patient := acc.PatientOnly()
	if patient == "" {
		patient = "*"
		if ps := vals["patient"]; len(ps) == 1 && !strings.Contains(ps[0], ",") {
			patient = strings.TrimPrefix(ps[0], "Patient/")
		}
	}
	return s.store.InTx(ctx, func(tx *store.Tx) error { return s.materializeAudit(tx, patient) })
}

// convertAudit turns pending audit rows into AuditEvents in the background, a bounded amount at a time.
func (s *Server) convertAudit(done <-chan struct{}) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			err := s.store.InTx(context.Background(), func(tx *store.Tx) error {
				rows, err := tx.PendingAudit("*", 1)
				if err != nil || len(rows) == 0 {
					return err
				}
				return s.materializeAudit(tx, "*")
			})
			if err != nil {
				s.log.Error("audit: converting the log to AuditEvents", "err", err)
			}
		}
	}
}

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
	in      chan auditRec
	flushCh chan chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newAuditLog(s *Server) *auditLog {
	l := &auditLog{s: s, in: make(chan auditRec, 1<<16), flushCh: make(chan chan struct{}), done: make(chan struct{})}
	go l.run()
	go s.convertAudit(l.done)
	return l
}

// record queues a read. It blocks (never drops) when the writer is behind.
func (l *auditLog) record(r auditRec) {
	select {
	case l.in <- r:
	case <-l.done:
	}
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
		close(l.done)
	})
}

func (l *auditLog) run() {
	t := time.NewTicker(auditFlushInterval)
	defer t.Stop()
	var buf []auditRec
	drain := func() {
		for {
			select {
			case r := <-l.in:
				buf = append(buf, r)
			default:
				return
			}
		}
	}
	for {
		select {
		case r := <-l.in:
			buf = append(buf, r)
			if len(buf) >= 4096 {
				buf = l.write(buf)
			}
		case <-t.C:
			drain()
			buf = l.write(buf)
		case ch := <-l.flushCh:
			drain()
			buf = l.write(buf)
			close(ch)
		case <-l.done:
			return
		}
	}
}

// write groups the records by agent and interaction, splits each group by patient, and appends one log row per
// (agent, interaction, patient).
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
			if k != 0 {
				keys = append(keys, k)
			} else {
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
		refs []string
	}
	groups := map[string]*group{}
	var order []string
	for _, r := range buf {
		for i, ref := range r.refs {
			patients := pr[ref]
			if r.keys[i] != 0 {
				patients = pk[r.keys[i]]
			}
			for _, p := range patients {
				k := r.agent.key() + "|" + r.interaction + "|" + p
				g := groups[k]
				if g == nil {
					g = &group{rec: store.AuditRecord{Start: r.at, End: r.at, Agent: r.agent.who, Client: r.agent.client, Interaction: r.interaction,
						Action: "R", Patient: p, Disclosure: r.agent.disclosure}}
					groups[k] = g
					order = append(order, k)
				}
				g.rec.End = r.at
				g.refs = append(g.refs, ref)
			}
		}
	}
	recs := make([]store.AuditRecord, 0, len(order))
	for _, k := range order {
		g := groups[k]
		g.rec.Refs = uniqStrings(g.refs)
		recs = append(recs, g.rec)
	}
	if err := s.store.LogAudit(ctx, recs); err != nil {
		s.log.Error("audit: writing read records", "err", err, "records", len(recs))
		return buf
	}
	return buf[:0]
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
