package rights

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/carta-fhir/carta/fhir"
)

// Role is the side an actor is on (rights.md §1).
type Role int

// The roles.
const (
	// RolePatient is the patient or a personal representative: a patient-confined token.
	RolePatient Role = iota + 1
	// RoleFulfiller is records staff or a clinician: a Practitioner signed in with user/ scopes.
	RoleFulfiller
	// RoleSystem is a backend system (EHR, HIE) with system/ scopes: it may do what its scopes allow.
	RoleSystem
)

// Actor is who asks for an action.
type Actor struct {
	Role Role
	// Ref is the fhirUser: Patient/…, RelatedPerson/… or Practitioner/…; empty for a system.
	Ref string
	// Patient is the patient a patient-side actor acts for.
	Patient string
}

func (a Actor) patientSide() bool { return a.Role == RolePatient }

func (a Actor) fulfiller() bool { return a.Role == RoleFulfiller || a.Role == RoleSystem }

// Contact is what a notice says about whom to contact and how to complain or ask for more; operation parameters
// override it.
type Contact struct {
	Name, Phone   string // the contact person or office: name or title, and telephone (164.524(d)(2)(iii))
	Complaint     string // how to complain to the provider
	ReviewHowTo   string // how to ask for a review of a reviewable access denial
	DisagreeHowTo string // how to file a statement of disagreement
}

// Config is the provider's side of the rules.
type Config struct {
	// Loc is the zone deadlines are counted in.
	Loc *time.Location
	// Profiles are the jurisdiction profiles in force; HIPAA is always among them.
	Profiles []Profile
	// Owner is the records contact every request is assigned to (a Reference, e.g. Organization/records).
	Owner, OwnerDisplay string
	Contact             Contact
	// StatementMaxWords limits a statement of disagreement (164.526(d)(2)); 0 is no limit.
	StatementMaxWords int
}

// Rules applies the rights rules with a clock.
type Rules struct {
	Config
	Now   func() time.Time
	NewID func() string
}

// New returns Rules on the real clock with random ids.
func New(cfg Config) *Rules {
	if cfg.Loc == nil {
		cfg.Loc = time.UTC
	}
	hasHIPAA := false
	for _, p := range cfg.Profiles {
		hasHIPAA = hasHIPAA || p.Code == HIPAA.Code
	}
	if !hasHIPAA {
		cfg.Profiles = append([]Profile{HIPAA}, cfg.Profiles...)
	}
	return &Rules{Config: cfg, Now: time.Now, NewID: randomID}
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Write is a resource an action creates or changes besides the request Task.
type Write struct {
	Type, ID string
	Resource *fhir.Object
	// Create is true for a new resource (its id is new), false for an update of an existing one.
	Create bool
}

// Plan is what an action does: the Task to write, and the other writes, all in one transaction.
type Plan struct {
	Task   *fhir.Object
	Writes []Write
	// Message says in words what happened (the OperationOutcome of the response).
	Message string
}

func (p *Plan) add(typ string, res *fhir.Object, create bool) {
	p.Writes = append(p.Writes, Write{Type: typ, ID: res.String("id"), Resource: res, Create: create})
}

// violation is a broken rule: 422 naming it.
func violation(expr, format string, args ...any) error {
	return fhir.At(http.StatusUnprocessableEntity, fhir.IssueBusinessRule, expr, format, args...)
}

// forbidden is an action this actor may not take: 403 saying who may.
func forbidden(format string, args ...any) error {
	return fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, format, args...)
}

// Classify says which rules govern a Task, from its code. A code in one of the rights CodeSystems that is not
// one of their codes is refused.
func Classify(task *fhir.Object) (Kind, error) {
	for _, c := range codings(task, "code") {
		switch c.String("system") {
		case SystemRequestType:
			switch c.String("code") {
			case CodeAccessCopy, CodeAccessInspect, CodeAccessDirected:
				return KindAccess, nil
			case CodeDenialReview:
				return KindDenialReview, nil
			case CodeAccounting:
				return KindAccounting, nil
			}
			return KindNone, fhir.At(http.StatusBadRequest, fhir.IssueCodeInvalid, "Task.code", "%q is not a request type of %s (access-copy, access-inspect, access-directed, denial-review, accounting-of-disclosures)", c.String("code"), SystemRequestType)
		case SystemCorrectionTask:
			switch c.String("code") {
			case CodeCorrectionRequest:
				return KindAmendment, nil
			case CodeDisagreement:
				return KindDisagreement, nil
			}
			return KindNone, fhir.At(http.StatusBadRequest, fhir.IssueCodeInvalid, "Task.code", "%q is not a code of %s (medRecCxReq, medRecCxDenialDisagree)", c.String("code"), SystemCorrectionTask)
		}
	}
	return KindNone, nil
}

// requestCode is the Task's code in its rights CodeSystem.
func requestCode(task *fhir.Object) string {
	if c := codeIn(task, "code", SystemRequestType); c != "" {
		return c
	}
	return codeIn(task, "code", SystemCorrectionTask)
}

// step is the Task's status pair.
func step(task *fhir.Object, k Kind) Step {
	return Step{task.String("status"), codeIn(task, "businessStatus", businessSystem(k))}
}

func (r *Rules) setStep(task *fhir.Object, k Kind, s Step) {
	task.Set("status", s.Status)
	task.Set("businessStatus", concept(businessSystem(k), s.Business, ""))
}

func (r *Rules) instant(t time.Time) string { return t.In(r.Loc).Format("2006-01-02T15:04:05-07:00") }

func (r *Rules) today() Date { return DateOf(r.Now(), r.Loc) }

func (r *Rules) touch(task *fhir.Object) { task.Set("lastModified", r.instant(r.Now())) }

func (r *Rules) finish(task *fhir.Object) {
	now := r.instant(r.Now())
	p := task.Object("executionPeriod")
	if p == nil {
		p = &fhir.Object{}
		task.Set("executionPeriod", p)
	}
	p.Set("end", now)
	task.Set("lastModified", now)
}

func (r *Rules) start(task *fhir.Object) {
	if task.Object("executionPeriod").String("start") == "" {
		task.Set("executionPeriod", obj("start", r.instant(r.Now())))
	}
}

func open(s Step) bool { return s.Status == StatusReady || s.Status == StatusInProgress }

// checkPair refuses a status pair the kind does not have (the IG's two extra codes included).
func checkPair(k Kind, s Step) error {
	if s.Business == legacyInformRebutt || s.Business == legacyPartialAmend {
		return violation("Task.businessStatus", "%q appears in the corrections IG's prose but is not in its CodeSystem; it is never used (rights.md §3)", s.Business)
	}
	want, ok := pairs[k][s.Business]
	if !ok {
		return violation("Task.businessStatus", "%q is not a business status of a %s (%s)", s.Business, k, strings.Join(businessCodes(k), ", "))
	}
	if want != s.Status {
		return violation("Task.status", "businessStatus %q goes with status %q, not %q", s.Business, want, s.Status)
	}
	return nil
}

func businessCodes(k Kind) []string {
	var out []string
	for _, c := range []string{BSQueued, BSInReview, BSWaiting, BSFeeSent, BSAccepted, BSPartialAccept, BSFulfilled, BSPartial, BSAmended, BSDenied, BSRedirected, BSUpheld, BSReversed, BSDisagreement, BSCompleted, BSCancelled} {
		if _, ok := pairs[k][c]; ok {
			out = append(out, c)
		}
	}
	return out
}

// File applies the rules to a new request Task (POST /Task): the server sets authoredOn (receipt: the clock
// starts), the status pair, intent, owner and the due date, whatever the client sent for them. It returns nil for
// a plain Task.
func (r *Rules) File(task *fhir.Object, a Actor) (*Plan, error) {
	k, err := Classify(task)
	if err != nil || k == KindNone {
		return nil, err
	}
	switch k {
	case KindDenialReview:
		return nil, violation("Task.code", "a denial review is asked for on the denied request: POST Task/{id}/$request-review")
	case KindDisagreement:
		return nil, violation("Task.code", "a statement of disagreement is filed with POST Communication/$correctionrequest (category medRecCxDenialDisagree)")
	}
	if err := r.checkFiler(task, a); err != nil {
		return nil, err
	}
	if len(list(task, "output")) > 0 {
		return nil, forbidden("a new request has no output: outputs are written by the records office as the request is handled")
	}
	if err := r.checkInputs(task, k); err != nil {
		return nil, err
	}
	task.Set("intent", "order")
	task.Delete("statusReason")
	task.Delete("executionPeriod")
	r.setStep(task, k, Step{StatusReady, BSQueued})
	now := r.instant(r.Now())
	task.Set("authoredOn", now)
	task.Set("lastModified", now)
	if r.Owner != "" {
		task.Set("owner", refDisplay(r.Owner, r.OwnerDisplay))
	}
	r.setDeadline(task, k)
	addProfile(task, profileOf(k))
	return &Plan{Task: task, Message: fmt.Sprintf("%s received; due %s", k, dueOf(task))}, nil
}

// checkFiler checks who files: a patient-side actor for their own record, as the requester; records staff
// entering a request on the patient's behalf must name the requester.
func (r *Rules) checkFiler(task *fhir.Object, a Actor) error {
	forRef := refOf(task, "for")
	if !strings.HasPrefix(forRef, "Patient/") {
		return violation("Task.for", "a request names the patient whose record it is about: for = Patient/{id}")
	}
	patient := strings.TrimPrefix(forRef, "Patient/")
	requester := refOf(task, "requester")
	switch {
	case a.patientSide():
		if patient != a.Patient {
			return forbidden("a patient files requests about their own record only")
		}
		self := a.Ref
		if self == "" {
			self = "Patient/" + a.Patient
		}
		if requester == "" {
			task.Set("requester", ref(self))
		} else if requester != self {
			return violation("Task.requester", "the requester is the person filing the request (%s), not %s", self, requester)
		}
	case a.fulfiller():
		if !strings.HasPrefix(requester, "Patient/") && !strings.HasPrefix(requester, "RelatedPerson/") {
			return violation("Task.requester", "a request entered for a patient names its requester: the Patient or a RelatedPerson (personal representative)")
		}
	default:
		return forbidden("no role may file this request")
	}
	return nil
}

func profileOf(k Kind) string {
	switch k {
	case KindAccess:
		return ProfileAccessRequest
	case KindAccounting:
		return ProfileAccountingReq
	case KindDenialReview:
		return ProfileDenialReview
	}
	return ProfileCorrectionTask
}

func addProfile(res *fhir.Object, url string) {
	meta := res.Object("meta")
	if meta == nil {
		meta = &fhir.Object{}
		res.Set("meta", meta)
	}
	for _, v := range list(meta, "profile") {
		if v == url {
			return
		}
	}
	meta.Set("profile", append(list(meta, "profile"), url))
}

// checkInputs checks a request's inputs: codes of Carta's access-input system must be known, with sensible
// values; a directed copy needs its recipient, destination and signed directive (164.524(c)(3)(ii)).
func (r *Rules) checkInputs(task *fhir.Object, k Kind) error {
	if k == KindAmendment {
		for i, in := range objects(task, "input") {
			if c := ioType(in, SystemCorrectionComm); c != "" && c != CodeCorrectionRequest && c != CodeDisagreement {
				return fhir.At(http.StatusBadRequest, fhir.IssueCodeInvalid, fmt.Sprintf("Task.input[%d].type", i), "%q is not a PatientCorrectionCommunicationTypes code", c)
			}
		}
		return nil
	}
	for i, in := range objects(task, "input") {
		c := ioType(in, SystemAccessInput)
		if c == "" {
			continue
		}
		at := fmt.Sprintf("Task.input[%d]", i)
		switch c {
		case InRequestedRecords, InRecipient, InDestination:
		case InRequestedFormat:
			v := valueString(in)
			if v != "paper" && !strings.Contains(v, "/") {
				return violation(at, "requested-format is a MIME type such as application/fhir+json, application/pdf or text/html, or the code paper; got %q", v)
			}
		case InDelivery:
			if v := valueString(in); !contains(DeliveryMethods, v) {
				return violation(at, "delivery is one of %s; got %q", strings.Join(DeliveryMethods, ", "), v)
			}
		case InSignedDirective:
			if in.Object("valueAttachment") == nil {
				return violation(at, "signed-directive is the patient's signed written request, as an Attachment")
			}
		default:
			return fhir.At(http.StatusBadRequest, fhir.IssueCodeInvalid, at+".type", "%q is not an input of %s (%s)", c, SystemAccessInput, strings.Join(accessInputs, ", "))
		}
	}
	if requestCode(task) == CodeAccessDirected {
		for _, need := range []string{InRecipient, InDestination, InSignedDirective} {
			if len(ios(task, "input", SystemAccessInput, need)) == 0 {
				return violation("Task.input", "a copy sent to a third party needs the %s input: the request must be in writing, signed, and clearly name the person and where to send (45 CFR 164.524(c)(3)(ii))", need)
			}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// electronic reports whether the requested format is electronic (absent: the electronic copy the right
// presumes).
func electronic(task *fhir.Object) bool {
	for _, in := range ios(task, "input", SystemAccessInput, InRequestedFormat) {
		if valueString(in) == "paper" {
			return false
		}
	}
	return true
}

// deadline recomputes the request's clock from its receipt date.
func (r *Rules) deadline(task *fhir.Object) (Deadline, bool) {
	t, err := time.Parse(time.RFC3339, task.String("authoredOn"))
	if err != nil {
		return Deadline{}, false
	}
	return ComputeDeadline(r.Profiles, requestCode(task), DateOf(t, r.Loc), electronic(task))
}

// setDeadline writes the due date: restriction.period.end (the R4 due date) for Carta's Tasks, the R5
// requestedPeriod extension for the corrections IG's Tasks (which forbid restriction), and the deadline
// extension for both.
func (r *Rules) setDeadline(task *fhir.Object, k Kind) {
	d, ok := r.deadline(task)
	if !ok {
		return
	}
	setExtension(task, obj("url", ExtDeadline, "extension", arr(
		obj("url", "initialDue", "valueDate", d.Due.String()),
		obj("url", "ruleSet", "valueCode", d.RuleSet),
	)))
	r.setDue(task, k, d.Due)
}

func (r *Rules) setDue(task *fhir.Object, k Kind, due Date) {
	if k == KindAmendment || k == KindDisagreement {
		task.Delete("restriction")
		setExtension(task, obj("url", ExtRequestedPeriod, "valuePeriod", obj("end", due.String())))
		return
	}
	rs := task.Object("restriction")
	if rs == nil {
		rs = &fhir.Object{}
		task.Set("restriction", rs)
	}
	p := rs.Object("period")
	if p == nil {
		p = &fhir.Object{}
		rs.Set("period", p)
	}
	p.Set("end", due.String())
}

// dueOf is the Task's current due date as written.
func dueOf(task *fhir.Object) string {
	if s := task.Object("restriction").Object("period").String("end"); s != "" {
		return s
	}
	return extension(task, ExtRequestedPeriod).Object("valuePeriod").String("end")
}

// patientOf is the Task's patient id.
func patientOf(task *fhir.Object) string { return strings.TrimPrefix(refOf(task, "for"), "Patient/") }

// ensureParty refuses a patient-side actor on someone else's request.
func ensureParty(task *fhir.Object, a Actor) error {
	if a.patientSide() && patientOf(task) != a.Patient {
		return forbidden("this request is about another patient's record")
	}
	return nil
}

// requireFulfiller refuses a patient-side actor.
func requireFulfiller(a Actor, what string) error {
	if !a.fulfiller() {
		return forbidden("only the records office (a Practitioner with user/ scopes, or a backend system) may %s", what)
	}
	return nil
}

func kindOf(task *fhir.Object) Kind {
	k, _ := Classify(task)
	return k
}

// ---- status changes by PUT --------------------------------------------------------------------------------

// protected are the elements the server sets at filing and keeps: a PUT must echo them unchanged.
var protected = []string{"authoredOn", "owner", "intent", "for", "requester", "code", "restriction", "partOf", "reasonReference"}

// serverElements are what the actions write; a PUT's status change runs the matching action, whose result
// decides them.
var serverElements = []string{"status", "businessStatus", "statusReason", "output", "lastModified", "executionPeriod", "relevantHistory"}

// Update applies the rules to a whole-Task PUT. A change of the status pair is the same action as its
// operation and runs the same rule (a denial by PUT composes its notice from statusReason and the configured
// contact, like $deny without parameters; d is what the caller found about the records an amendment request
// disputes). It returns nil for a plain Task.
func (r *Rules) Update(cur, next *fhir.Object, a Actor, d Dispute) (*Plan, error) {
	kc, err := Classify(cur)
	if err != nil {
		return nil, err
	}
	kn, err := Classify(next)
	if err != nil {
		return nil, err
	}
	if kc == KindNone && kn == KindNone {
		return nil, nil
	}
	if kc != kn || requestCode(cur) != requestCode(next) {
		return nil, violation("Task.code", "the request type of a request Task never changes (it is %q)", requestCode(cur))
	}
	if err := ensureParty(cur, a); err != nil {
		return nil, err
	}
	for _, e := range protected {
		cv, _ := cur.Get(e)
		nv, _ := next.Get(e)
		if !fhir.Equal(cv, nv) {
			return nil, violation("Task."+e, "%s is set by the server and never changes; send it as it is", e)
		}
	}
	for _, url := range []string{ExtDeadline, ExtRequestedPeriod} {
		if !fhir.Equal(extension(cur, url), extension(next, url)) {
			return nil, violation("Task.extension", "the deadline (%s) is written by the server; an extension is asked with $extend", url)
		}
	}
	if inputsChanged := !fhir.Equal(listOrNil(cur, "input"), listOrNil(next, "input")); inputsChanged {
		if !a.patientSide() {
			return nil, forbidden("only the requester side writes Task.input")
		}
		if err := r.checkInputs(next, kn); err != nil {
			return nil, err
		}
	}
	if err := r.checkNotes(cur, next, a); err != nil {
		return nil, err
	}
	from, to := step(cur, kc), step(next, kn)
	if next.String("status") == StatusCancelled && to.Business == "" {
		to.Business = BSCancelled
	}
	changed := from != to || !fhir.Equal(cur.Object("statusReason"), next.Object("statusReason")) || !fhir.Equal(listOrNil(cur, "output"), listOrNil(next, "output"))
	var plan *Plan
	if changed {
		if a.patientSide() {
			if to.Status != StatusCancelled {
				return nil, forbidden("only the records office changes status, businessStatus, statusReason and output; a requester may only cancel (status cancelled)")
			}
			plan, err = r.Cancel(cur, a)
		} else {
			plan, err = r.transitionByPut(cur, next, kc, to, a, d)
		}
		if err != nil {
			return nil, err
		}
	} else {
		plan = &Plan{Task: fhir.Clone(cur).(*fhir.Object), Message: "updated"}
	}
	// The client's other elements (notes, description, …) with the server's elements from the action.
	out := fhir.Clone(next).(*fhir.Object)
	for _, e := range serverElements {
		if v, ok := plan.Task.Get(e); ok {
			out.Set(e, v)
		} else {
			out.Delete(e)
		}
	}
	if !fhir.Equal(stripVolatile(cur), stripVolatile(out)) {
		r.touch(out)
	}
	plan.Task = out
	return plan, nil
}

func listOrNil(o *fhir.Object, key string) any {
	v, _ := o.Get(key)
	return v
}

func stripVolatile(t *fhir.Object) *fhir.Object {
	c := fhir.Clone(t).(*fhir.Object)
	c.Delete("lastModified")
	c.Delete("meta")
	return c
}

// checkNotes: a note is changed or removed only by its author; a new note without an author is the actor's.
func (r *Rules) checkNotes(cur, next *fhir.Object, a Actor) error {
	old := objects(cur, "note")
	nw := objects(next, "note")
	matched := make([]bool, len(nw))
	for _, o := range old {
		found := false
		for j, n := range nw {
			if !matched[j] && fhir.Equal(o, n) {
				matched[j], found = true, true
				break
			}
		}
		if !found && refOf(o, "authorReference") != a.Ref {
			return forbidden("a note is changed or removed only by its author (%s)", noteAuthor(o))
		}
	}
	for j, n := range nw {
		if matched[j] {
			continue
		}
		author := refOf(n, "authorReference")
		if author == "" && n.String("authorString") == "" && a.Ref != "" {
			n.Set("authorReference", ref(a.Ref))
		} else if author != "" && author != a.Ref {
			return forbidden("a note is written in its author's name only: %s is not %s", author, a.Ref)
		}
		if n.String("time") == "" {
			n.Set("time", r.instant(r.Now()))
		}
	}
	return nil
}

func noteAuthor(n *fhir.Object) string {
	if s := refOf(n, "authorReference"); s != "" {
		return s
	}
	if s := n.String("authorString"); s != "" {
		return s
	}
	return "unknown"
}

// transitionByPut maps a fulfiller's status change to its action.
func (r *Rules) transitionByPut(cur, next *fhir.Object, k Kind, to Step, a Actor, d Dispute) (*Plan, error) {
	if err := checkPair(k, to); err != nil {
		return nil, err
	}
	switch to.Business {
	case BSInReview, BSWaiting, BSAccepted, BSPartialAccept, BSQueued:
		if !fhir.Equal(listOrNil(cur, "output"), listOrNil(next, "output")) {
			return nil, violation("Task.output", "outputs are written by the operations ($fee-estimate, $fulfil, $redirect, $deny, $accept)")
		}
		return r.Transition(cur, a, to.Business)
	case BSFeeSent:
		amount := firstOutput(next, SystemAccessOutput, OutFeeEstimate)
		basis := firstOutput(next, SystemAccessOutput, OutFeeBasis)
		if amount == nil || amount.Object("valueMoney") == nil {
			return nil, violation("Task.output", "a fee estimate is an output fee-estimate (valueMoney) with its fee-basis; or use $fee-estimate")
		}
		return r.FeeEstimate(cur, a, FeeParams{Amount: moneyOf(amount.Object("valueMoney")), Basis: valueString(orEmpty(basis))})
	case BSFulfilled:
		return r.Fulfil(cur, a, FulfilParams{Delivered: outputRefs(next, OutDelivered)})
	case BSRedirected:
		return r.Redirect(cur, a, valueString(orEmpty(firstOutput(next, SystemAccessOutput, OutRedirectTo))))
	case BSDenied, BSPartial:
		p := DenyParams{Ground: groundOf(next, k), Basis: next.Object("statusReason").String("text")}
		if to.Business == BSPartial {
			p.Delivered = outputRefs(next, OutDelivered)
			if len(p.Delivered) == 0 {
				return nil, violation("Task.output", "partially-fulfilled delivers part of the records: give the delivered outputs")
			}
		}
		return r.Deny(cur, a, p, d)
	case BSCancelled:
		return nil, forbidden("a request is cancelled by its requester only")
	case BSAmended:
		return nil, violation("Task.businessStatus", "an amendment is applied with $accept, which writes the amended DocumentReference, its Provenance and the notices")
	case BSDisagreement, BSCompleted:
		return nil, violation("Task.businessStatus", "a disagreement is logged when the patient files it ($correctionrequest), and answered with $rebut")
	case BSUpheld, BSReversed:
		return nil, violation("Task.businessStatus", "a review is decided with $decide-review by an eligible reviewer")
	}
	return nil, violation("Task.businessStatus", "no action leads to %q", to.Business)
}

func orEmpty(o *fhir.Object) *fhir.Object {
	if o == nil {
		return &fhir.Object{}
	}
	return o
}

func firstOutput(task *fhir.Object, system, code string) *fhir.Object {
	if l := ios(task, "output", system, code); len(l) > 0 {
		return l[0]
	}
	return nil
}

func outputRefs(task *fhir.Object, code string) []string {
	var out []string
	for _, o := range ios(task, "output", SystemAccessOutput, code) {
		if s := refOf(o, "valueReference"); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func groundOf(task *fhir.Object, k Kind) string {
	if k == KindAmendment {
		return codeIn(task, "statusReason", SystemAmendmentDenial)
	}
	return codeIn(task, "statusReason", SystemAccessDenial)
}

// transitions are the status changes that are only a change of business status (no letter, no output).
var transitions = map[Kind]map[string][]string{
	KindAccess: {
		BSQueued: {BSInReview, BSWaiting}, BSInReview: {BSWaiting}, BSWaiting: {BSInReview}, BSFeeSent: {BSInReview, BSWaiting},
	},
	KindDenialReview: {BSQueued: {BSInReview}},
	KindAmendment: {
		BSQueued: {BSInReview, BSWaiting}, BSInReview: {BSWaiting, BSAccepted, BSPartialAccept}, BSWaiting: {BSInReview},
		BSAccepted: {BSInReview, BSPartialAccept}, BSPartialAccept: {BSInReview, BSAccepted},
	},
}

func init() { transitions[KindAccounting] = transitions[KindAccess] }

// Transition moves an open request to another working state: start review, ask for information, back to
// review, accepted (amendments).
func (r *Rules) Transition(cur *fhir.Object, a Actor, to string) (*Plan, error) {
	k := kindOf(cur)
	if err := requireFulfiller(a, "move a request through its states"); err != nil {
		return nil, err
	}
	from := step(cur, k)
	if !contains(transitions[k][from.Business], to) {
		if from.Business == to {
			return &Plan{Task: fhir.Clone(cur).(*fhir.Object), Message: "unchanged"}, nil
		}
		return nil, violation("Task.businessStatus", "a %s in %q cannot move to %q%s", k, from.Business, to, allowedNext(k, from.Business))
	}
	t := fhir.Clone(cur).(*fhir.Object)
	r.setStep(t, k, Step{pairs[k][to], to})
	r.start(t)
	r.touch(t)
	return &Plan{Task: t, Message: fmt.Sprintf("%s is now %s", k, to)}, nil
}

func allowedNext(k Kind, from string) string {
	next := transitions[k][from]
	if len(next) == 0 {
		return ""
	}
	return " (from there: " + strings.Join(next, ", ") + ", or the operations)"
}

// Cancel is the requester's one status change: an open request becomes cancelled/requester-cancelled.
func (r *Rules) Cancel(cur *fhir.Object, a Actor) (*Plan, error) {
	k := kindOf(cur)
	if !a.patientSide() {
		return nil, forbidden("a request is cancelled by its requester (the patient or their representative) only")
	}
	if err := ensureParty(cur, a); err != nil {
		return nil, err
	}
	if k == KindDisagreement {
		return nil, violation("Task.status", "a statement of disagreement, once logged, stays with the record")
	}
	if !open(step(cur, k)) {
		return nil, violation("Task.status", "only an open request can be cancelled; this one is %s", cur.String("status"))
	}
	t := fhir.Clone(cur).(*fhir.Object)
	r.setStep(t, k, Step{StatusCancelled, BSCancelled})
	r.finish(t)
	return &Plan{Task: t, Message: fmt.Sprintf("%s cancelled", k)}, nil
}

// Summary is a request Task in a few words (for lists of overdue requests).
type Summary struct{ Type, Patient, Status, Due string }

// Describe summarizes a request Task: its request code, patient, business status and due date.
func Describe(task *fhir.Object) Summary {
	k := kindOf(task)
	return Summary{Type: requestCode(task), Patient: refOf(task, "for"), Status: step(task, k).Business, Due: dueOf(task)}
}
