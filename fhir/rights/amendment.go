package rights

import (
	"fmt"
	"strings"

	"github.com/carta-fhir/carta/fhir"
)

// commCategory is the corrections category of a Communication.
func commCategory(c *fhir.Object) string {
	for _, cat := range objects(c, "category") {
		for _, cd := range objects(cat, "coding") {
			if cd.String("system") == SystemCorrectionComm {
				return cd.String("code")
			}
		}
	}
	return ""
}

// CommCategory says whether a Communication is a correction request (medRecCxReq) or a disagreement
// (medRecCxDenialDisagree), or neither ("").
func CommCategory(c *fhir.Object) string { return commCategory(c) }

// checkSender checks a patient-side Communication: about the actor's patient, sent by the actor.
func checkSender(c *fhir.Object, a Actor) error {
	subject := refOf(c, "subject")
	if !strings.HasPrefix(subject, "Patient/") {
		return violation("Communication.subject", "the request names the patient whose record it is about: subject = Patient/{id}")
	}
	if a.patientSide() {
		if strings.TrimPrefix(subject, "Patient/") != a.Patient {
			return forbidden("a patient asks for corrections of their own record only")
		}
		self := a.Ref
		if self == "" {
			self = subject
		}
		switch s := refOf(c, "sender"); s {
		case "":
			c.Set("sender", ref(self))
		case self:
		default:
			return violation("Communication.sender", "the sender is the person filing (%s), not %s", self, s)
		}
	} else if s := refOf(c, "sender"); !strings.HasPrefix(s, "Patient/") && !strings.HasPrefix(s, "RelatedPerson/") {
		return violation("Communication.sender", "a request entered for a patient names its sender: the Patient or a RelatedPerson")
	}
	if c.String("status") != "completed" {
		return violation("Communication.status", "a correction Communication has status completed (the corrections IG fixes it), got %q", c.String("status"))
	}
	return nil
}

// CorrectionRequest files an amendment request that came as a Communication ($correctionrequest): the server
// stores the Communication, creates the Task (ready/queued, the 60-day clock) and points the Communication's
// about at it (corrections IG, rights.md §3).
func (r *Rules) CorrectionRequest(c *fhir.Object, a Actor) (*Plan, error) {
	if commCategory(c) != CodeCorrectionRequest {
		return nil, violation("Communication.category", "a correction request has category medRecCxReq (%s)", SystemCorrectionComm)
	}
	if len(list(c, "about")) > 0 || len(list(c, "partOf")) > 0 {
		return nil, violation("Communication.about", "a new correction request has no about and no partOf: the server links it to the Task it creates (a follow-up names the request in partOf)")
	}
	if err := checkSender(c, a); err != nil {
		return nil, err
	}
	if len(list(c, "payload")) == 0 {
		return nil, violation("Communication.payload", "say what is wrong and what it should say: the request's text, attachments, and references to the records concerned")
	}
	comm := fhir.Clone(c).(*fhir.Object)
	comm.Set("id", r.NewID())
	if comm.String("sent") == "" {
		comm.Set("sent", r.instant(r.Now()))
	}
	if len(list(comm, "recipient")) == 0 && r.Owner != "" {
		comm.Set("recipient", arr(ref(r.Owner)))
	}
	addProfile(comm, ProfileCorrectionComm)
	t := obj(
		"resourceType", "Task", "id", r.NewID(),
		"status", StatusReady,
		"intent", "order",
		"code", concept(SystemCorrectionTask, CodeCorrectionRequest, "Correction request"),
		"focus", ref(firstRecord(comm)),
		"for", ref(refOf(comm, "subject")),
		"requester", ref(refOf(comm, "sender")),
		"input", arr(io(SystemCorrectionComm, CodeCorrectionRequest, "", "valueReference", ref("Communication/"+comm.String("id")))),
	)
	plan, err := r.File(t, a)
	if err != nil {
		return nil, err
	}
	comm.Set("about", arr(ref("Task/"+t.String("id"))))
	plan.add("Communication", comm, true)
	plan.Message = fmt.Sprintf("correction request received as Communication/%s; Task/%s due %s", comm.String("id"), t.String("id"), dueOf(t))
	return plan, nil
}

// firstRecord is the first record a request's payload points to (the disputed record).
func firstRecord(c *fhir.Object) string {
	for _, p := range objects(c, "payload") {
		if s := refOf(p, "contentReference"); s != "" {
			return s
		}
	}
	return ""
}

// Records are every record a request's payload points to.
func Records(c *fhir.Object) []string {
	var out []string
	for _, p := range objects(c, "payload") {
		if s := refOf(p, "contentReference"); s != "" && !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// Text is the text of a Communication's payload (its strings).
func Text(c *fhir.Object) string {
	var parts []string
	for _, p := range objects(c, "payload") {
		if s := p.String("contentString"); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, "\n\n")
}

// FollowUp stores a later message of a correction thread (either side): about the request's Task, partOf the
// initial request.
func (r *Rules) FollowUp(c, task *fhir.Object, a Actor) (*Plan, error) {
	if err := ensureParty(task, a); err != nil {
		return nil, err
	}
	if a.patientSide() {
		if err := checkSender(c, a); err != nil {
			return nil, err
		}
	}
	comm := fhir.Clone(c).(*fhir.Object)
	comm.Set("id", r.NewID())
	if comm.String("sent") == "" {
		comm.Set("sent", r.instant(r.Now()))
	}
	about := "Task/" + task.String("id")
	found := false
	for _, ab := range objects(comm, "about") {
		found = found || ab.String("reference") == about
	}
	if !found {
		comm.Set("about", append(list(comm, "about"), ref(about)))
	}
	addProfile(comm, ProfileCorrectionComm)
	pl := &Plan{Message: fmt.Sprintf("message stored as Communication/%s in the thread of Task/%s", comm.String("id"), task.String("id"))}
	pl.add("Communication", comm, true)
	return pl, nil
}

// Disagree files the patient's statement of disagreement with an amendment denial (164.526(d)(2)): the
// Communication, a medRecCxDenialDisagree Task (logged at once, reasonReference to the denied request), the
// denied request marked disagreement-logged, and the statement appended to the disputed records.
func (r *Rules) Disagree(c, denied *fhir.Object, a Actor, d Dispute, already bool) (*Plan, error) {
	if commCategory(c) != CodeDisagreement {
		return nil, violation("Communication.category", "a statement of disagreement has category medRecCxDenialDisagree")
	}
	if err := checkSender(c, a); err != nil {
		return nil, err
	}
	if err := ensureParty(denied, a); err != nil {
		return nil, err
	}
	bs := step(denied, kindOf(denied)).Business
	if already || (kindOf(denied) == KindAmendment && (bs == BSDisagreement || bs == BSCompleted)) {
		return nil, violation("Communication", "a statement of disagreement with this denial was already filed")
	}
	if kindOf(denied) != KindAmendment || bs != BSDenied {
		return nil, violation("Communication.about", "a statement of disagreement needs a prior denial of an amendment request; Task/%s is %s", denied.String("id"), bs)
	}
	statement := Text(c)
	if strings.TrimSpace(statement) == "" {
		return nil, violation("Communication.payload", "the statement of disagreement is the payload's text")
	}
	if max := r.StatementMaxWords; max > 0 {
		if n := len(strings.Fields(statement)); n > max {
			return nil, violation("Communication.payload", "a statement of disagreement is limited to %d words here (45 CFR 164.526(d)(2)); this one has %d", max, n)
		}
	}
	comm := fhir.Clone(c).(*fhir.Object)
	comm.Set("id", r.NewID())
	if comm.String("sent") == "" {
		comm.Set("sent", r.instant(r.Now()))
	}
	if len(list(comm, "partOf")) == 0 {
		if first := initialCommunication(denied); first != "" {
			comm.Set("partOf", arr(ref(first)))
		}
	}
	if len(list(comm, "inResponseTo")) == 0 {
		for _, o := range ios(denied, "output", SystemCorrectionOutput, CodeResolution) {
			comm.Set("inResponseTo", arr(ref(refOf(o, "valueReference"))))
		}
	}
	if len(list(comm, "recipient")) == 0 && r.Owner != "" {
		comm.Set("recipient", arr(ref(r.Owner)))
	}
	addProfile(comm, ProfileCorrectionComm)
	now := r.instant(r.Now())
	t := obj(
		"resourceType", "Task", "id", r.NewID(),
		"meta", obj("profile", arr(ProfileCorrectionTask)),
		"status", StatusCompleted,
		"businessStatus", concept(SystemCorrectionStatus, BSDisagreement, ""),
		"intent", "order",
		"code", concept(SystemCorrectionTask, CodeDisagreement, "Disagreement with a denied correction"),
		"focus", ref(refOf(denied, "focus")),
		"for", ref(refOf(denied, "for")),
		"authoredOn", now,
		"lastModified", now,
		"requester", ref(refOf(comm, "sender")),
		"owner", refDisplay(r.Owner, r.OwnerDisplay),
		"reasonReference", ref("Task/"+denied.String("id")),
		"input", arr(io(SystemCorrectionComm, CodeDisagreement, "", "valueReference", ref("Communication/"+comm.String("id")))),
	)
	comm.Set("about", arr(ref("Task/"+t.String("id"))))
	orig := fhir.Clone(denied).(*fhir.Object)
	r.setStep(orig, KindAmendment, Step{StatusCompleted, BSDisagreement})
	r.touch(orig)
	pl := &Plan{Task: t, Message: fmt.Sprintf("statement of disagreement logged as Task/%s; it now goes with the disputed records", t.String("id"))}
	pl.add("Communication", comm, true)
	pl.add("Task", orig, false)
	for _, doc := range r.disputeDocs(denied, d.Targets, []disputePart{{DisputeDisagreement, "Statement of disagreement", statement, refOf(comm, "sender")}}) {
		pl.add("DocumentReference", doc, true)
	}
	return pl, nil
}

// Rebut writes the provider's rebuttal of a statement of disagreement; the patient receives a copy
// (164.526(d)(3)) and it is appended to the disputed records.
func (r *Rules) Rebut(disagreement, denied *fhir.Object, a Actor, text string, d Dispute) (*Plan, error) {
	if err := requireFulfiller(a, "write a rebuttal"); err != nil {
		return nil, err
	}
	if kindOf(disagreement) != KindDisagreement {
		return nil, violation("Task.code", "$rebut answers a statement of disagreement (a medRecCxDenialDisagree Task)")
	}
	if step(disagreement, KindDisagreement).Business != BSDisagreement {
		return nil, violation("Task.businessStatus", "this statement of disagreement was already answered with a rebuttal")
	}
	if strings.TrimSpace(text) == "" {
		return nil, violation("text", "the rebuttal's text, which the patient receives")
	}
	t := fhir.Clone(disagreement).(*fhir.Object)
	letter := fmt.Sprintf("We have read your statement of disagreement with the denial of %s. Our response:\n\n%s", r.requestName(denied), strings.TrimSpace(text))
	n := r.notice(t, NoticeRebuttal, "Our response to your statement of disagreement", letter, toPatient(t))
	if first := initialCommunication(denied); first != "" {
		n.Set("partOf", arr(ref(first))) // the thread starts at the original request
	}
	addIO(t, "output", io(SystemCorrectionOutput, CodeResolution, "", "valueReference", ref("Communication/"+n.String("id"))))
	r.setStep(t, KindDisagreement, Step{StatusCompleted, BSCompleted})
	r.touch(t)
	orig := fhir.Clone(denied).(*fhir.Object)
	r.setStep(orig, KindAmendment, Step{StatusCompleted, BSCompleted})
	r.touch(orig)
	pl := &Plan{Task: t, Message: fmt.Sprintf("rebuttal sent to the patient as Communication/%s and kept with the disputed records", n.String("id"))}
	pl.add("Communication", n, true)
	pl.add("Task", orig, false)
	for _, doc := range r.disputeDocs(denied, d.Targets, []disputePart{{DisputeRebuttal, "Rebuttal of the statement of disagreement", strings.TrimSpace(text), r.Owner}}) {
		pl.add("DocumentReference", doc, true)
	}
	return pl, nil
}

// AcceptParams are what $accept applies: the amended document's content, the stored original it amends, how
// (replaces or appends), and the people the patient named to be told.
type AcceptParams struct {
	Amended     *fhir.Object
	Original    *fhir.Object
	Mode        string
	Notify      []string
	Explanation string
}

// Accept applies an accepted amendment (164.526(c)): a new DocumentReference (docStatus amended) that replaces
// the original (which becomes superseded) or appends to it; a Provenance; the patient told; each person the
// patient named notified.
func (r *Rules) Accept(cur *fhir.Object, a Actor, p AcceptParams) (*Plan, error) {
	if err := requireFulfiller(a, "accept an amendment"); err != nil {
		return nil, err
	}
	if kindOf(cur) != KindAmendment {
		return nil, violation("Task.code", "$accept applies an accepted amendment request (medRecCxReq)")
	}
	if !open(step(cur, KindAmendment)) {
		return nil, violation("Task.status", "only an open amendment request can be accepted; this one is %s", cur.String("status"))
	}
	if p.Mode != "replaces" && p.Mode != "appends" {
		return nil, violation("mode", "mode is replaces (the amended document supersedes the original) or appends (it is added to the original); got %q", p.Mode)
	}
	if p.Amended == nil || p.Amended.String("resourceType") != "DocumentReference" {
		return nil, violation("amended", "the amended record is a DocumentReference")
	}
	if p.Original == nil || p.Original.String("resourceType") != "DocumentReference" {
		return nil, violation("original", "the record amended is a DocumentReference of the patient")
	}
	patient := refOf(cur, "for")
	if refOf(p.Original, "subject") != patient {
		return nil, violation("original", "DocumentReference/%s is not a record of %s", p.Original.String("id"), patient)
	}
	if p.Original.String("status") != "current" {
		return nil, violation("original", "DocumentReference/%s is %s; only a current record is amended", p.Original.String("id"), p.Original.String("status"))
	}
	if s := refOf(p.Amended, "subject"); s != "" && s != patient {
		return nil, violation("amended.subject", "the amended record is about %s, not %s", patient, s)
	}
	origRef := "DocumentReference/" + p.Original.String("id")
	doc := fhir.Clone(p.Amended).(*fhir.Object)
	doc.Set("id", r.NewID())
	doc.Delete("meta")
	doc.Set("status", "current")
	doc.Set("docStatus", "amended")
	if refOf(doc, "subject") == "" {
		doc.Set("subject", ref(patient))
	}
	if doc.String("date") == "" {
		doc.Set("date", r.instant(r.Now()))
	}
	doc.Set("relatesTo", append(list(doc, "relatesTo"), obj("code", p.Mode, "target", ref(origRef))))
	docRef := "DocumentReference/" + doc.String("id")
	t := fhir.Clone(cur).(*fhir.Object)
	pl := &Plan{}
	pl.add("DocumentReference", doc, true)
	targets := []string{docRef}
	op := "APPEND"
	if p.Mode == "replaces" {
		orig := fhir.Clone(p.Original).(*fhir.Object)
		orig.Set("status", "superseded")
		pl.add("DocumentReference", orig, false)
		targets = append(targets, origRef)
		op = "UPDATE"
	}
	prov := r.provenance(targets, a, "Amendment at the patient's request (Task/"+t.String("id")+")", op, origRef)
	pl.add("Provenance", prov, true)
	how := map[string]string{"replaces": "replaces", "appends": "is added to"}[p.Mode]
	text := fmt.Sprintf("We have accepted %s and amended your record: %s %s %s.", r.requestName(t), docRef, how, origRef)
	if p.Explanation != "" {
		text += " " + p.Explanation
	}
	if len(p.Notify) > 0 {
		text += " We are informing the people you named: " + strings.Join(p.Notify, ", ") + "."
	}
	n := r.notice(t, NoticeAmended, "Your record was amended", text, toPatient(t))
	n.Set("payload", append(list(n, "payload"), obj("contentReference", ref(docRef))))
	pl.add("Communication", n, true)
	for _, who := range uniq(p.Notify) {
		c := obj("resourceType", "Communication", "id", r.NewID(), "status", "completed",
			"category", arr(concept(SystemNoticeType, NoticeAmendmentToPeer, "Amendment of a record you received")),
			"subject", ref(patient), "about", arr(ref("Task/"+t.String("id"))), "sent", r.instant(r.Now()),
			"recipient", arr(ref(who)), "sender", refDisplay(r.Owner, r.OwnerDisplay),
			"payload", arr(obj("contentString", fmt.Sprintf("At the patient's request, %s was amended: %s %s it (45 CFR 164.526(c)(3)).", origRef, docRef, how)),
				obj("contentReference", ref(docRef))))
		pl.add("Communication", c, true)
	}
	addIO(t, "output", io(SystemCorrectionOutput, CodeResolution, "", "valueReference", ref("Communication/"+n.String("id"))))
	t.Set("relevantHistory", append(list(t, "relevantHistory"), ref("Provenance/"+prov.String("id"))))
	r.setStep(t, KindAmendment, Step{StatusCompleted, BSAmended})
	r.start(t)
	r.finish(t)
	pl.Task = t
	pl.Message = fmt.Sprintf("amendment applied: %s %s %s; the patient and %d named person(s) were told", docRef, how, origRef, len(uniq(p.Notify)))
	return pl, nil
}

// CheckInvariants checks what the corrections IG enforces on a Task (task-output2, task-reasonreference,
// task-status-allowed) and the status pair of any request Task.
func CheckInvariants(task *fhir.Object) error {
	k := kindOf(task)
	if k == KindNone {
		return nil
	}
	if err := checkPair(k, step(task, k)); err != nil {
		return err
	}
	if k == KindAmendment && task.String("status") == StatusCompleted && len(ios(task, "output", SystemCorrectionOutput, CodeResolution)) == 0 {
		return violation("Task.output", "task-output2: a completed medRecCxReq Task has an output of type medRecCxReqResolution")
	}
	if k == KindDisagreement && refOf(task, "reasonReference") == "" {
		return violation("Task.reasonReference", "task-reasonreference: a medRecCxDenialDisagree Task refers to the original request")
	}
	if (k == KindAmendment || k == KindDisagreement) && task.Object("restriction") != nil {
		return violation("Task.restriction", "the corrections IG forbids Task.restriction; the due date is in the requestedPeriod extension")
	}
	return nil
}

// AskedToDisclose reports whether the patient asked, on an amendment request, that the request and its denial go
// with future disclosures of the records concerned (164.526(d)(1)(iii)): the extension disclose-with-record = true
// on the request Task (the requester adds it with a PUT).
func AskedToDisclose(task *fhir.Object) bool {
	if e := extension(task, ExtDiscloseDispute); e != nil {
		v, _ := e.Get("valueBoolean")
		return v == true
	}
	return false
}
