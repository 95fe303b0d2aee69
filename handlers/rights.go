package handlers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
	r4 "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// actorOf is the rights role of a caller: a patient-confined token without a practitioner behind it is the
// patient's side; a Practitioner is a fulfiller; anything else (a backend system) acts as its scopes allow.
func actorOf(p *auth.Principal) rights.Actor {
	if p == nil {
		return rights.Actor{Role: rights.RoleSystem}
	}
	switch {
	case strings.HasPrefix(p.FHIRUser, "Practitioner/"):
		return rights.Actor{Role: rights.RoleFulfiller, Ref: p.FHIRUser}
	case p.PatientLimited():
		a := rights.Actor{Role: rights.RolePatient, Patient: p.Patient}
		if strings.HasPrefix(p.FHIRUser, "Patient/") || strings.HasPrefix(p.FHIRUser, "RelatedPerson/") {
			a.Ref = p.FHIRUser
		}
		return a
	}
	return rights.Actor{Role: rights.RoleSystem}
}

// rightsHook applies the rights rules to every write of Tasks, Communications and DocumentReferences, by any
// path (REST, Bundle entries, conditional writes, imports).
type rightsHook struct{ s *Server }

func (h rightsHook) Write(tx *store.Tx, typ, id string, cur *store.Stored, res *fhir.Object) (*fhir.Object, func(*store.Stored) error, error) {
	p := auth.PrincipalFrom(tx.Context())
	a := actorOf(p)
	var curObj *fhir.Object
	if cur != nil && cur.Raw != nil {
		o, err := fhir.ParseResource(cur.Raw, typ)
		if err != nil {
			return nil, nil, err
		}
		curObj = o
	}
	switch typ {
	case "Task":
		return h.task(tx, p, a, curObj, res)
	case "Communication", "DocumentReference":
		if curObj != nil && isKept(curObj) {
			what := "changed"
			if res == nil {
				what = "deleted"
			}
			return nil, nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule,
				"%s/%s is part of a patient's request (a letter sent, a message of the request, or a dispute document kept with the record); it is kept as it is for at least six years and is never %s (45 CFR 164.530(j))", typ, curObj.String("id"), what)
		}
	}
	return res, nil, nil
}

// isKept reports the Communications and DocumentReferences the rights workflow wrote or received.
func isKept(o *fhir.Object) bool {
	if o.String("resourceType") == "Communication" {
		if rights.CommCategory(o) != "" {
			return true
		}
		for _, c := range codingsOf(o.Object("topic")) {
			if c.String("system") == rights.SystemNoticeType {
				return true
			}
		}
		for _, cat := range objectsOf(o, "category") {
			for _, c := range codingsOf(cat) {
				if c.String("system") == rights.SystemNoticeType {
					return true
				}
			}
		}
		return false
	}
	for _, t := range objectsOf(o.Object("meta"), "tag") {
		if t.String("system") == rights.SystemDisputeRole {
			return true
		}
	}
	return false
}

func objectsOf(o *fhir.Object, key string) []*fhir.Object {
	v, _ := o.Get(key)
	l, _ := v.([]any)
	var out []*fhir.Object
	for _, x := range l {
		if ob, ok := x.(*fhir.Object); ok {
			out = append(out, ob)
		}
	}
	return out
}

func codingsOf(cc *fhir.Object) []*fhir.Object { return objectsOf(cc, "coding") }

func (h rightsHook) task(tx *store.Tx, p *auth.Principal, a rights.Actor, cur, res *fhir.Object) (*fhir.Object, func(*store.Stored) error, error) {
	s := h.s
	switch {
	case res == nil: // delete
		if k, _ := rights.Classify(cur); k != rights.KindNone {
			return nil, nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule,
				"a %s is kept for at least six years and never deleted (45 CFR 164.530(j)); the requester may cancel it instead ($cancel)", k)
		}
		return nil, nil, nil
	case cur == nil:
		plan, err := s.rights.File(res, a)
		if err != nil || plan == nil {
			return res, nil, err
		}
		if err := s.checkOwnRecords(tx, p, a, recordsOf(plan.Task)); err != nil {
			return nil, nil, err
		}
		return plan.Task, s.afterPlan(tx, plan), nil
	default:
		var d rights.Dispute
		if k, _ := rights.Classify(cur); k == rights.KindAmendment {
			d = s.disputeOf(tx, cur)
		}
		plan, err := s.rights.Update(cur, res, a, d)
		if err != nil || plan == nil {
			return res, nil, err
		}
		return plan.Task, s.afterPlan(tx, plan), nil
	}
}

// recordsOf are the records a request Task points to (focus).
func recordsOf(task *fhir.Object) []string {
	if r := task.Object("focus").String("reference"); r != "" {
		return []string{r}
	}
	return nil
}

// checkOwnRecords refuses a patient-side request that points at records the caller may not read.
func (s *Server) checkOwnRecords(tx *store.Tx, p *auth.Principal, a rights.Actor, refs []string) error {
	if a.Role != rights.RolePatient || p == nil {
		return nil
	}
	for _, r := range refs {
		typ, id, _, ok := fhir.SplitReference(r)
		if !ok {
			return fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "%q is not a reference to a record here (Type/id)", r)
		}
		if _, err := tx.Read(typ, id, p.Access()); err != nil {
			return fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "%s is not one of your records", r)
		}
	}
	return nil
}

// afterPlan writes the resources a rule implies, after the request Task itself.
func (s *Server) afterPlan(tx *store.Tx, plan *rights.Plan) func(*store.Stored) error {
	if len(plan.Writes) == 0 {
		return nil
	}
	return func(*store.Stored) error { return s.writePlan(tx, plan.Writes) }
}

// writePlan writes what a rule decided, checked like a client's resource (valid R4, the IG's Task
// invariants): the server never stores what it would refuse from a client.
func (s *Server) writePlan(tx *store.Tx, writes []rights.Write) error {
	for _, w := range writes {
		if err := checkServerResource(w.Type, w.Resource); err != nil {
			return err
		}
		var err error
		if w.Create {
			_, err = tx.Create(w.Type, w.Resource, store.CreateOptions{ID: w.ID, Trusted: true}, nil)
		} else {
			_, err = tx.Update(w.Type, w.ID, w.Resource, store.UpdateOptions{Trusted: true}, nil)
		}
		if err != nil {
			return err
		}
		if w.Type == "DocumentReference" && isKept(w.Resource) {
			// Known at once here (a rolled-back dispute only costs one search that finds nothing).
			s.disputes.add(relatedOf(fhir.AppendJSON(nil, w.Resource))...)
		}
	}
	return nil
}

func checkServerResource(typ string, o *fhir.Object) error {
	if issues := fhir.R4().Validate(o, ""); len(issues) > 0 {
		return fmt.Errorf("rights: the server built an invalid %s: %v", typ, fhir.ValidationError(issues))
	}
	if typ == "Task" {
		if err := rights.CheckInvariants(o); err != nil {
			return fmt.Errorf("rights: the server built a Task that breaks an invariant: %v", err)
		}
	}
	return nil
}

// disputeOf finds what an amendment request disputes: its focus and the records its request Communication points
// to, and the request's text.
func (s *Server) disputeOf(tx *store.Tx, task *fhir.Object) rights.Dispute {
	var d rights.Dispute
	d.Targets = recordsOf(task)
	for _, in := range objectsOf(task, "input") {
		r := in.Object("valueReference").String("reference")
		typ, id, _, ok := fhir.SplitReference(r)
		if !ok || typ != "Communication" {
			continue
		}
		st, err := tx.Read(typ, id, nil)
		if err != nil {
			continue
		}
		c, err := fhir.ParseResource(st.Raw, typ)
		if err != nil {
			continue
		}
		d.RequestText = rights.Text(c)
		for _, rec := range rights.Records(c) {
			if !contains(d.Targets, rec) {
				d.Targets = append(d.Targets, rec)
			}
		}
	}
	return d
}

// ---- operations -------------------------------------------------------------------------------------------

// opParams are an operation's input Parameters.
type opParams struct{ list []*fhir.Object }

// readParameters reads an operation's body: empty, or a Parameters resource whose parameter names are among
// allowed (an unknown one is refused, never ignored).
func (s *Server) readParameters(c *gin.Context, op string, allowed ...string) (opParams, error) {
	body, err := s.readBodyOptional(c)
	if err != nil {
		return opParams{}, err
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return opParams{}, nil
	}
	o, err := fhir.ParseResource(body, "Parameters")
	if err != nil {
		return opParams{}, err
	}
	ps := objectsOf(o, "parameter")
	for i, p := range ps {
		if !contains(allowed, p.String("name")) {
			return opParams{}, fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, fmt.Sprintf("Parameters.parameter[%d].name", i),
				"%s takes no parameter %q (it takes: %s)", op, p.String("name"), strings.Join(allowed, ", "))
		}
	}
	return opParams{ps}, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func (p opParams) all(name string) []*fhir.Object {
	var out []*fhir.Object
	for _, x := range p.list {
		if x.String("name") == name {
			out = append(out, x)
		}
	}
	return out
}

// str is a parameter's value as text.
func (p opParams) str(name string) string {
	for _, x := range p.all(name) {
		for _, k := range []string{"valueString", "valueCode", "valueDate", "valueDateTime", "valueUri", "valueUrl", "valueMarkdown", "valueId"} {
			if v := x.String(k); v != "" {
				return v
			}
		}
	}
	return ""
}

func (p opParams) refs(name string) []string {
	var out []string
	for _, x := range p.all(name) {
		if r := x.Object("valueReference").String("reference"); r != "" {
			out = append(out, r)
		} else if v := x.String("valueString"); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func (p opParams) money(name string) rights.Money {
	for _, x := range p.all(name) {
		if m := x.Object("valueMoney"); m != nil {
			v, _ := m.Get("value")
			var f float64
			if _, err := fmt.Sscan(fmt.Sprint(v), &f); err == nil {
				return rights.Money{Value: f, Currency: m.String("currency"), Set: true}
			}
		}
		if d, ok := x.Get("valueDecimal"); ok {
			var f float64
			if _, err := fmt.Sscan(fmt.Sprint(d), &f); err == nil {
				return rights.Money{Value: f, Set: true}
			}
		}
	}
	return rights.Money{}
}

func (p opParams) resource(name string) *fhir.Object {
	for _, x := range p.all(name) {
		if r := x.Object("resource"); r != nil {
			return r
		}
	}
	return nil
}

// taskOpPerm is the scope letter each Task operation needs: $request-review creates a Task, the others change one.
func taskOpPerm(code string) byte {
	if code == "request-review" {
		return auth.PermCreate
	}
	return auth.PermUpdate
}

// taskOperation runs POST /fhir/Task/{id}/${op}: load the Task and what the rule needs, apply the rule, write
// its plan, all in one transaction, and answer with the Task (201 when the operation created one).
func (s *Server) taskOperation(c *gin.Context) {
	op, id := c.Param("op"), c.Param("id")
	spec, ok := rights.OperationByCode("Task", strings.TrimPrefix(op, "$"))
	if !ok || !strings.HasPrefix(op, "$") || !spec.Instance {
		s.fail(c, fhir.Errorf(http.StatusNotFound, fhir.IssueNotSupported, "Task has no instance operation %q (%s)", op, strings.Join(taskOpNames(), ", ")))
		return
	}
	p := principal(c)
	if _, err := p.Require("Task", taskOpPerm(spec.Code)); err != nil {
		s.fail(c, err)
		return
	}
	params, err := s.readParameters(c, op, spec.ParamNames()...)
	if err != nil {
		s.fail(c, err)
		return
	}
	im, err := ifMatch(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	a := actorOf(p)
	var written *store.Stored
	var created bool
	var message string
	err = s.store.InTx(c.Request.Context(), func(tx *store.Tx) error {
		st, err := tx.Read("Task", id, p.Access())
		if err != nil {
			return err
		}
		if im != "" && im != st.VersionID() {
			return fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueConflict, "If-Match: Task/%s is at version %s, not %s", id, st.VersionID(), im)
		}
		cur, err := fhir.ParseResource(st.Raw, "Task")
		if err != nil {
			return err
		}
		if k, _ := rights.Classify(cur); k == rights.KindNone {
			return fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "Task/%s is not a request of the rights workflow (its code is neither a Carta request type nor a corrections IG code)", id)
		}
		plan, err := s.runTaskOp(tx, op, cur, params, a, p)
		if err != nil {
			return err
		}
		if err := checkServerResource("Task", plan.Task); err != nil {
			return err
		}
		var w *store.WriteResult
		if plan.Task.String("id") == id {
			w, err = tx.Update("Task", id, plan.Task, store.UpdateOptions{Trusted: true}, nil)
		} else {
			w, err = tx.Create("Task", plan.Task, store.CreateOptions{ID: plan.Task.String("id"), Trusted: true}, nil)
			created = true
		}
		if err != nil {
			return err
		}
		written, message = w.Stored, plan.Message
		return s.writePlan(tx, plan.Writes)
	})
	if err != nil {
		s.fail(c, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	s.writeWritten(c, status, written, message)
}

func taskOpNames() []string {
	var out []string
	for _, o := range rights.Operations {
		if o.Resource == "Task" && o.Instance {
			out = append(out, "$"+o.Code)
		}
	}
	return out
}

func (s *Server) runTaskOp(tx *store.Tx, op string, cur *fhir.Object, ps opParams, a rights.Actor, p *auth.Principal) (*rights.Plan, error) {
	r := s.rights
	switch op {
	case "$cancel":
		return r.Cancel(cur, a)
	case "$extend":
		return r.Extend(cur, a, ps.str("reason"), ps.str("due"))
	case "$fee-estimate":
		return r.FeeEstimate(cur, a, rights.FeeParams{Amount: ps.money("amount"), Basis: ps.str("basis"),
			Labor: ps.money("labor"), Supplies: ps.money("supplies"), Postage: ps.money("postage")})
	case "$fulfil":
		delivered := ps.refs("delivered")
		if k, _ := rights.Classify(cur); k == rights.KindAccounting && len(delivered) == 0 {
			return s.fulfilAccounting(tx, cur, a)
		}
		formats, err := s.checkDelivered(tx, cur, delivered)
		if err != nil {
			return nil, err
		}
		var dispute []string
		if codeOf(cur) == rights.CodeAccessDirected {
			var err error
			if dispute, err = s.disclosureDocs(txLookup{s, tx}, delivered); err != nil {
				return nil, err
			}
		}
		return r.Fulfil(cur, a, rights.FulfilParams{Delivered: delivered, Dispute: dispute, Formats: formats, FormatAgreed: ps.str("format-agreed")})
	case "$redirect":
		return r.Redirect(cur, a, ps.str("where"))
	case "$deny":
		dp := rights.DenyParams{Ground: ps.str("ground"), Basis: ps.str("basis"), ReviewHowTo: ps.str("review-rights"), DisagreeHowTo: ps.str("disagree-how-to"),
			ContactName: ps.str("contact-name"), ContactPhone: ps.str("contact-phone"), Complaint: ps.str("complaint"), Delivered: ps.refs("delivered")}
		var d rights.Dispute
		if k, _ := rights.Classify(cur); k == rights.KindAmendment {
			d = s.disputeOf(tx, cur)
		}
		return r.Deny(cur, a, dp, d)
	case "$request-review":
		found, err := s.searchTasks(tx, url2("part-of", "Task/"+cur.String("id"), "code", rights.SystemRequestType+"|"+rights.CodeDenialReview))
		if err != nil {
			return nil, err
		}
		return r.RequestReview(cur, a, len(found) > 0)
	case "$decide-review":
		return s.decideReview(tx, cur, a, ps)
	case "$accept":
		return s.accept(tx, cur, a, ps)
	case "$rebut":
		deniedRef := cur.Object("reasonReference").String("reference")
		denied, err := s.readTrusted(tx, deniedRef)
		if err != nil {
			return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "the statement's original request %s cannot be read: %v", deniedRef, err)
		}
		return r.Rebut(cur, denied, a, ps.str("text"), s.disputeOf(tx, denied))
	}
	return nil, fhir.Errorf(http.StatusNotFound, fhir.IssueNotSupported, "no operation %s", op)
}

func codeOf(task *fhir.Object) string {
	for _, c := range codingsOf(task.Object("code")) {
		if c.String("system") == rights.SystemRequestType || c.String("system") == rights.SystemCorrectionTask {
			return c.String("code")
		}
	}
	return ""
}

// url2 builds search parameters from pairs.
func url2(kv ...string) map[string][]string {
	out := map[string][]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = append(out[kv[i]], kv[i+1])
	}
	return out
}

// searchTasks runs a Task search inside the transaction, with the server's own access.
func (s *Server) searchTasks(tx *store.Tx, vals map[string][]string) ([]*store.Stored, error) {
	return s.searchIn(tx, "Task", vals)
}

func (s *Server) searchIn(tx *store.Tx, typ string, vals map[string][]string) ([]*store.Stored, error) {
	vals["_count"] = []string{"1000"}
	q, err := fhir.ParseQuery(typ, vals, fhir.QueryOptions{Base: s.base, Loc: s.loc})
	if err != nil {
		return nil, err
	}
	pg, err := tx.Search(q, nil)
	if err != nil {
		return nil, err
	}
	return pg.Matches, nil
}

// lookup finds resources with the server's own access, in a transaction or not.
type lookup interface {
	find(typ string, vals map[string][]string) ([]*store.Stored, error)
	get(reference string) (*fhir.Object, error)
}

type txLookup struct {
	s  *Server
	tx *store.Tx
}

func (l txLookup) find(typ string, vals map[string][]string) ([]*store.Stored, error) {
	return l.s.searchIn(l.tx, typ, vals)
}

func (l txLookup) get(reference string) (*fhir.Object, error) {
	return l.s.readTrusted(l.tx, reference)
}

type storeLookup struct {
	s   *Server
	ctx context.Context
}

func (l storeLookup) find(typ string, vals map[string][]string) ([]*store.Stored, error) {
	vals["_count"] = []string{"1000"}
	q, err := fhir.ParseQuery(typ, vals, fhir.QueryOptions{Base: l.s.base, Loc: l.s.loc})
	if err != nil {
		return nil, err
	}
	pg, err := l.s.store.Search(l.ctx, q, nil)
	if err != nil {
		return nil, err
	}
	return pg.Matches, nil
}

func (l storeLookup) get(reference string) (*fhir.Object, error) {
	typ, id, _, ok := fhir.SplitReference(reference)
	if !ok {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "%q is not a reference (Type/id)", reference)
	}
	st, err := l.s.store.Read(l.ctx, typ, id, nil)
	if err != nil {
		return nil, err
	}
	return fhir.ParseResource(st.Raw, typ)
}

// readTrusted reads a referenced resource with the server's own access.
func (s *Server) readTrusted(tx *store.Tx, reference string) (*fhir.Object, error) {
	typ, id, _, ok := fhir.SplitReference(reference)
	if !ok {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "%q is not a reference (Type/id)", reference)
	}
	st, err := tx.Read(typ, id, nil)
	if err != nil {
		return nil, err
	}
	return fhir.ParseResource(st.Raw, typ)
}

// checkDelivered refuses delivered references to nothing, or to another patient's records.
// It returns the formats each is available in: a DocumentReference's attachment types, a Binary's content type,
// application/fhir+json for any FHIR resource.
func (s *Server) checkDelivered(tx *store.Tx, task *fhir.Object, refs []string) (map[string][]string, error) {
	patient := strings.TrimPrefix(task.Object("for").String("reference"), "Patient/")
	formats := map[string][]string{}
	for _, r := range refs {
		typ, id, _, ok := fhir.SplitReference(r)
		if !ok {
			return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "delivered", "%q is not a reference to a record here (Type/id)", r)
		}
		st, err := tx.Read(typ, id, &fhir.Access{Patient: patient})
		if err != nil {
			return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "delivered", "%s is not a record of Patient/%s that can be delivered: %v", r, patient, err)
		}
		formats[r] = []string{"application/fhir+json"}
		o, err := fhir.ParseResource(st.Raw, typ)
		if err != nil {
			continue
		}
		switch typ {
		case "DocumentReference":
			for _, c := range objectsOf(o, "content") {
				if ct := c.Object("attachment").String("contentType"); ct != "" {
					formats[r] = append(formats[r], ct)
				}
			}
		case "Binary":
			if ct := o.String("contentType"); ct != "" {
				formats[r] = append(formats[r], ct)
			}
		}
	}
	return formats, nil
}

// licensed reports whether a Practitioner record marks a licensed health care professional: a current
// qualification with Carta's code, or a clinical degree or licence of HL7 v2 table 0360.
func licensed(pr *fhir.Object, today time.Time) bool {
	for _, q := range objectsOf(pr, "qualification") {
		if per := q.Object("period"); per != nil {
			if end := per.String("end"); end != "" && end < today.Format("2006-01-02") {
				continue
			}
		}
		for _, c := range codingsOf(q.Object("code")) {
			switch c.String("system") {
			case rights.SystemQualification:
				if c.String("code") == rights.QualificationLicensed {
					return true
				}
			case "http://terminology.hl7.org/CodeSystem/v2-0360":
				if contains(licensedDegrees, c.String("code")) {
					return true
				}
			}
		}
	}
	return false
}

// licensedDegrees are the v2-0360 codes of licensed clinicians.
var licensedDegrees = []string{"MD", "DO", "NP", "PA", "RN", "CNP", "CNS", "CNM", "CRN", "PharmD", "DDS", "DMD", "DPM", "PHD", "PSYD", "LPN", "MSN"}

func (s *Server) decideReview(tx *store.Tx, review *fhir.Object, a rights.Actor, ps opParams) (*rights.Plan, error) {
	var deniedRef string
	for _, po := range objectsOf(review, "partOf") {
		deniedRef = po.String("reference")
	}
	denied, err := s.readTrusted(tx, deniedRef)
	if err != nil {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "the denied request %s cannot be read: %v", deniedRef, err)
	}
	var notice *fhir.Object
	for _, o := range objectsOf(denied, "output") {
		for _, c := range codingsOf(o.Object("type")) {
			if c.String("code") == rights.OutDenialNotice {
				notice, _ = s.readTrusted(tx, o.Object("valueReference").String("reference"))
			}
		}
	}
	provs, err := s.searchIn(tx, "Provenance", url2("target", deniedRef))
	if err != nil {
		return nil, err
	}
	var provObjs []*fhir.Object
	for _, st := range provs {
		if o, err := fhir.ParseResource(st.Raw, "Provenance"); err == nil {
			provObjs = append(provObjs, o)
		}
	}
	who := rights.Reviewer{Participants: rights.Participants(denied, notice, provObjs)}
	if strings.HasPrefix(a.Ref, "Practitioner/") {
		if pr, err := s.readTrusted(tx, a.Ref); err == nil {
			who.Licensed = licensed(pr, s.rights.Now())
		}
	}
	return s.rights.DecideReview(review, denied, a, who, ps.str("outcome"), ps.str("rationale"))
}

func (s *Server) accept(tx *store.Tx, task *fhir.Object, a rights.Actor, ps opParams) (*rights.Plan, error) {
	originalRef := ""
	if r := ps.refs("original"); len(r) > 0 {
		originalRef = r[0]
	} else {
		originalRef = task.Object("focus").String("reference")
	}
	if !strings.HasPrefix(originalRef, "DocumentReference/") {
		return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "original", "say which DocumentReference is amended (the original parameter, or the request's focus); got %q", originalRef)
	}
	original, err := s.readTrusted(tx, originalRef)
	if err != nil {
		return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "original", "%s cannot be read: %v", originalRef, err)
	}
	amended := ps.resource("amended")
	if amended != nil {
		// The amended record is checked like any DocumentReference a client sends.
		if _, err := fhir.ParseResource(fhir.AppendJSON(nil, amended), "DocumentReference"); err != nil {
			return nil, err
		}
	}
	return s.rights.Accept(task, a, rights.AcceptParams{Amended: amended, Original: original, Mode: ps.str("mode"), Notify: ps.refs("notify"), Explanation: ps.str("explanation")})
}

// disclosureDocs are the dispute documents that go with records disclosed outside the provider
// (164.526(d)(5)): all of them when a statement of disagreement was filed; the request and the denial only if the
// patient asked for that; nothing else.
func (s *Server) disclosureDocs(l lookup, records []string) ([]string, error) {
	var out []string
	for _, r := range records {
		docs, err := l.find("DocumentReference", url2("related", r, "_tag", rights.SystemDisputeRole+"|"))
		if err != nil {
			return nil, err
		}
		roles := map[string][]string{}
		var tasks []string
		for _, st := range docs {
			o, err := fhir.ParseResource(st.Raw, "DocumentReference")
			if err != nil {
				continue
			}
			for _, t := range objectsOf(o.Object("meta"), "tag") {
				if t.String("system") == rights.SystemDisputeRole {
					roles[t.String("code")] = append(roles[t.String("code")], "DocumentReference/"+st.ID)
				}
			}
			for _, rel := range objectsOf(o.Object("context"), "related") {
				if ref := rel.String("reference"); strings.HasPrefix(ref, "Task/") && !contains(tasks, ref) {
					tasks = append(tasks, ref)
				}
			}
		}
		if len(roles[rights.DisputeDisagreement]) > 0 {
			for _, role := range []string{rights.DisputeRequest, rights.DisputeDenial, rights.DisputeDisagreement, rights.DisputeRebuttal} {
				out = append(out, roles[role]...)
			}
			continue
		}
		asked := false
		for _, t := range tasks {
			if task, err := l.get(t); err == nil && rights.AskedToDisclose(task) {
				asked = true
			}
		}
		if asked {
			out = append(out, roles[rights.DisputeRequest]...)
			out = append(out, roles[rights.DisputeDenial]...)
		}
	}
	return out, nil
}

// ---- $correctionrequest -------------------------------------------------------------------------------------

// correctionRequest runs POST /fhir/Communication/$correctionrequest (also spelled $correction-request): the
// body is a collection Bundle with exactly one correction Communication (or that Communication alone). A new
// request creates its Task; a follow-up joins its thread; a statement of disagreement is logged against the
// denied request. The answer is a collection Bundle with the stored Communication and its Task.
func (s *Server) correctionRequest(c *gin.Context) {
	p := principal(c)
	if _, err := p.Require("Communication", auth.PermCreate); err != nil {
		s.fail(c, err)
		return
	}
	body, err := s.readBody(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	in, err := fhir.ParseResource(body, "")
	if err != nil {
		s.fail(c, err)
		return
	}
	comm, err := correctionCommunication(in)
	if err != nil {
		s.fail(c, err)
		return
	}
	a := actorOf(p)
	var task, stored *store.Stored
	created := false
	err = s.store.InTx(c.Request.Context(), func(tx *store.Tx) error {
		var plan *rights.Plan
		var err error
		switch {
		case rights.CommCategory(comm) == rights.CodeDisagreement:
			denied, err2 := s.threadTask(tx, comm, p)
			if err2 != nil {
				return err2
			}
			found, err2 := s.searchTasks(tx, url2("reasonreference", "Task/"+denied.String("id"), "code", rights.SystemCorrectionTask+"|"+rights.CodeDisagreement))
			if err2 != nil {
				return err2
			}
			plan, err = s.rights.Disagree(comm, denied, a, s.disputeOf(tx, denied), len(found) > 0)
		case len(objectsOf(comm, "partOf")) > 0:
			t, err2 := s.threadTask(tx, comm, p)
			if err2 != nil {
				return err2
			}
			if len(objectsOf(comm, "inResponseTo")) == 0 {
				// The thread's last message is the one this answers (the IG links them by inResponseTo).
				prev, err2 := s.searchIn(tx, "Communication", url2("about", "Task/"+t.String("id"), "_sort", "-sent"))
				if err2 != nil {
					return err2
				}
				if len(prev) > 0 {
					comm.Set("inResponseTo", []any{&fhir.Object{Keys: []string{"reference"}, Vals: []any{"Communication/" + prev[0].ID}}})
				}
			}
			if plan, err = s.rights.FollowUp(comm, t, a); err == nil {
				task, err = tx.Read("Task", t.String("id"), nil)
			}
		default:
			if err := s.checkOwnRecords(tx, p, a, rights.Records(comm)); err != nil {
				return err
			}
			plan, err = s.rights.CorrectionRequest(comm, a)
		}
		if err != nil {
			return err
		}
		if plan.Task != nil {
			if err := checkServerResource("Task", plan.Task); err != nil {
				return err
			}
			w, err := tx.Create("Task", plan.Task, store.CreateOptions{ID: plan.Task.String("id"), Trusted: true}, nil)
			if err != nil {
				return err
			}
			task, created = w.Stored, true
		}
		if err := s.writePlan(tx, plan.Writes); err != nil {
			return err
		}
		for _, w := range plan.Writes {
			if w.Type == "Communication" && w.Create && stored == nil {
				st, err := tx.Read("Communication", w.ID, nil)
				if err != nil {
					return err
				}
				stored = st
			}
		}
		return nil
	})
	if err != nil {
		s.fail(c, err)
		return
	}
	bw := fhir.NewBundle("collection", -1, nil)
	if stored != nil {
		bw.Add(fhir.Entry{FullURL: s.base + "/Communication/" + stored.ID, Raw: stored.Raw})
	}
	status := http.StatusOK
	if task != nil {
		bw.Add(fhir.Entry{FullURL: s.base + "/Task/" + task.ID, Raw: task.Raw})
		c.Header("Location", s.base+"/Task/"+task.ID)
		if created {
			status = http.StatusCreated
		}
	}
	s.writeJSON(c, status, bw.Bytes())
}

// correctionCommunication takes the one correction Communication of a $correctionrequest body.
func correctionCommunication(in *fhir.Object) (*fhir.Object, error) {
	switch in.String("resourceType") {
	case "Communication":
		return in, nil
	case "Bundle":
	default:
		return nil, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "resourceType", "$correctionrequest takes a collection Bundle holding one correction Communication (or the Communication alone), not a %s", in.String("resourceType"))
	}
	if in.String("type") != "collection" {
		return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "Bundle.type", "the correction request Bundle is a collection (patient-correction-bundle), not %q", in.String("type"))
	}
	var comm *fhir.Object
	for i, e := range objectsOf(in, "entry") {
		r := e.Object("resource")
		if r.String("resourceType") != "Communication" || rights.CommCategory(r) == "" {
			return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, fmt.Sprintf("Bundle.entry[%d]", i),
				"only the correction Communication is processed; send attachments inside it (payload.contentAttachment) and refer to records already here (payload.contentReference)")
		}
		if comm != nil {
			return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, fmt.Sprintf("Bundle.entry[%d]", i), "the Bundle holds exactly one correction Communication")
		}
		comm = r
	}
	if comm == nil {
		return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "Bundle.entry", "the Bundle holds no correction Communication (category medRecCxReq or medRecCxDenialDisagree)")
	}
	return comm, nil
}

// threadTask finds the request Task a later Communication belongs to: the Task in its about, or the Task of
// the Communication it is partOf.
func (s *Server) threadTask(tx *store.Tx, comm *fhir.Object, p *auth.Principal) (*fhir.Object, error) {
	for _, ab := range objectsOf(comm, "about") {
		if r := ab.String("reference"); strings.HasPrefix(r, "Task/") {
			return s.readOwn(tx, r, p)
		}
	}
	for _, po := range objectsOf(comm, "partOf") {
		first, err := s.readOwn(tx, po.String("reference"), p)
		if err != nil {
			return nil, err
		}
		for _, ab := range objectsOf(first, "about") {
			if r := ab.String("reference"); strings.HasPrefix(r, "Task/") {
				return s.readOwn(tx, r, p)
			}
		}
	}
	return nil, fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "Communication.about",
		"a follow-up or a statement of disagreement names its request: about = the request's Task, or partOf = the first Communication of the request")
}

// readOwn reads a referenced resource with the caller's access (404 for what is not theirs).
func (s *Server) readOwn(tx *store.Tx, reference string, p *auth.Principal) (*fhir.Object, error) {
	typ, id, _, ok := fhir.SplitReference(reference)
	if !ok {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, "%q is not a reference (Type/id)", reference)
	}
	st, err := tx.Read(typ, id, p.Access())
	if err != nil {
		return nil, err
	}
	return fhir.ParseResource(st.Raw, typ)
}

// rightsOperations declares the rights operations for the CapabilityStatement, each with its OperationDefinition.
func rightsOperations() map[string][]r4.CapabilityStatementRestResourceOperation {
	out := map[string][]r4.CapabilityStatementRestResourceOperation{}
	for _, o := range rights.Operations {
		doc := o.Doc
		out[o.Resource] = append(out[o.Resource], r4.CapabilityStatementRestResourceOperation{Name: o.Code, Definition: o.Canonical(), Documentation: &doc})
	}
	return out
}

// InstallDefinitions writes the rights workflow's OperationDefinitions and CodeSystems into the store (when they
// differ from what is there), so clients can read them at /fhir/OperationDefinition/{id} and
// /fhir/CodeSystem/{id}. carta serve calls it at start.
func InstallDefinitions(ctx context.Context, st *store.Store) error {
	var defs []*fhir.Object
	for _, o := range rights.Operations {
		defs = append(defs, o.OperationDefinition())
	}
	defs = append(defs, rights.CodeSystems()...)
	return st.InTx(ctx, func(tx *store.Tx) error {
		for _, d := range defs {
			typ := d.String("resourceType")
			if err := checkServerResource(typ, d); err != nil {
				return err
			}
			if _, err := tx.Update(typ, d.String("id"), d, store.UpdateOptions{Trusted: true}, nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// fulfilAccounting answers an accounting-of-disclosures request from the audit trail: the disclosures outside
// the provider (reads by backend systems, directed copies) of the six years before the request.
func (s *Server) fulfilAccounting(tx *store.Tx, task *fhir.Object, a rights.Actor) (*rights.Plan, error) {
	patient := strings.TrimPrefix(task.Object("for").String("reference"), "Patient/")
	since := s.rights.Now().AddDate(-6, 0, 0).UTC().Format("2006-01-02")
	if _, err := s.materializeAudit(tx, patient, 0); err != nil {
		return nil, err
	}
	events, err := s.searchIn(tx, "AuditEvent", url2("patient", patient, "subtype", SystemAuditKind+"|"+AuditDisclosure, "date", "ge"+since, "_sort", "date"))
	if err != nil {
		return nil, err
	}
	var ds []rights.Disclosure
	for _, st := range events {
		ev, err := fhir.ParseResource(st.Raw, "AuditEvent")
		if err != nil {
			continue
		}
		d := rights.Disclosure{When: ev.Object("period").String("start")}
		if d.When == "" {
			d.When = ev.String("recorded")
		}
		for _, ag := range objectsOf(ev, "agent") {
			if v, _ := ag.Get("requestor"); v == true {
				d.To = ag.Object("who").String("reference")
				if d.To == "" {
					d.To = ag.Object("who").String("display")
				}
			}
		}
		for _, en := range objectsOf(ev, "entity") {
			if r := en.Object("what").String("reference"); r != "" && r != "Patient/"+patient {
				d.What = append(d.What, r)
			}
		}
		ds = append(ds, d)
	}
	doc := s.rights.AccountingDocument(task, ds)
	plan, err := s.rights.Fulfil(task, a, rights.FulfilParams{Delivered: []string{"DocumentReference/" + doc.String("id")}})
	if err != nil {
		return nil, err
	}
	plan.Writes = append([]rights.Write{{Type: "DocumentReference", ID: doc.String("id"), Resource: doc, Create: true}}, plan.Writes...)
	plan.Message = fmt.Sprintf("accounting of %d disclosure(s) delivered as DocumentReference/%s", len(ds), doc.String("id"))
	return plan, nil
}
