package handlers

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/store"
	"github.com/google/uuid"
)

// Audit (rights.md §9). Every change is recorded as an AuditEvent in the transaction that makes it. Reads,
// searches and exports are recorded by a batched writer: the request queues a record and goes on; a background
// writer groups what arrived within half a second by who asked, what interaction and which patient, and writes one
// AuditEvent per group (with the resources as entities). The trade-off: a read costs a queue send instead of a
// write, and its audit reaches the database within a second (flushed at shutdown too) — a crash of the process
// may lose the last second of read records, never a change's.

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

// auditChange is the store's Auditor: one AuditEvent per patient whose compartment the change is in (a change of
// a shared resource: one without a patient), in the same transaction.
func (s *Server) auditChange(tx *store.Tx, st *store.Stored, action string, patients []string) error {
	a := agentFrom(auth.PrincipalFrom(tx.Context()))
	interaction := map[string]string{"C": "create", "U": "update", "D": "delete"}[action]
	ref := st.Type + "/" + st.ID
	if len(patients) == 0 {
		patients = []string{""}
	}
	for _, p := range patients {
		patient := p
		if strings.HasPrefix(p, fhir.RestrictedPrefix) {
			patient = "" // its AuditEvent joins the restricted compartment through the entity, not the patient's
		}
		ev := s.auditEvent(a, interaction, action, time.Time{}, time.Time{}, patient, []string{ref}, "0")
		if _, err := tx.Create("AuditEvent", ev, store.CreateOptions{ID: ev.String("id"), Trusted: true}, nil); err != nil {
			return err
		}
	}
	return nil
}

// auditRec is a read waiting for the batched writer.
type auditRec struct {
	at          time.Time
	agent       agent
	interaction string
	refs        []string
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

// write groups the records by agent and interaction, splits each group by patient, and writes one AuditEvent per
// (agent, interaction, patient) in one transaction.
func (l *auditLog) write(buf []auditRec) []auditRec {
	if len(buf) == 0 {
		return buf
	}
	s := l.s
	type group struct {
		a           agent
		interaction string
		start, end  time.Time
		refs        []string
	}
	groups := map[string]*group{}
	var order []string
	var all []string
	for _, r := range buf {
		k := r.agent.key() + "|" + r.interaction
		g := groups[k]
		if g == nil {
			g = &group{a: r.agent, interaction: r.interaction, start: r.at}
			groups[k] = g
			order = append(order, k)
		}
		g.end = r.at
		g.refs = append(g.refs, r.refs...)
		all = append(all, r.refs...)
	}
	ctx := context.Background()
	patients, err := s.store.PatientsOf(ctx, uniqStrings(all))
	if err != nil {
		s.log.Error("audit: finding the patients of read records", "err", err)
		return buf // kept for the next flush
	}
	var events []*fhir.Object
	for _, k := range order {
		g := groups[k]
		byPatient := map[string][]string{}
		for _, r := range uniqStrings(g.refs) {
			for _, p := range patients[r] {
				byPatient[p] = append(byPatient[p], r)
			}
		}
		keys := make([]string, 0, len(byPatient))
		for p := range byPatient {
			keys = append(keys, p)
		}
		sort.Strings(keys)
		for _, p := range keys {
			refs := byPatient[p]
			patient := p
			if strings.HasPrefix(p, fhir.RestrictedPrefix) {
				patient = ""
			}
			for len(refs) > 0 {
				n := min(len(refs), auditMaxEntities)
				events = append(events, s.auditEvent(g.a, g.interaction, "R", g.start, g.end, patient, refs[:n], "0"))
				refs = refs[n:]
			}
		}
	}
	err = s.store.InTx(ctx, func(tx *store.Tx) error {
		for _, ev := range events {
			if _, err := tx.Create("AuditEvent", ev, store.CreateOptions{ID: ev.String("id"), Trusted: true}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("audit: writing read records", "err", err, "events", len(events))
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
	var refs []string
	for _, st := range sts {
		if st != nil {
			refs = append(refs, st.Type+"/"+st.ID)
		}
	}
	s.auditRefs(ctx, interaction, refs)
}

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
	if len(refs) == 0 {
		return
	}
	s.auditLog.record(auditRec{at: time.Now(), agent: agentFrom(auth.PrincipalFrom(ctx)), interaction: interaction, refs: refs})
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
