package rights

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/carta-fhir/carta/fhir"
)

// notice builds a letter from the records office to the patient about a request: a Communication whose text
// is the letter. Letters about an amendment request follow the corrections IG (category medRecCxReq, partOf the
// initial request, about the Task); the kind of letter is in topic for both.
func (r *Rules) notice(task *fhir.Object, noticeType, title, text string, recipients []string, extra ...any) *fhir.Object {
	k := kindOf(task)
	id := r.NewID()
	category := concept(SystemNoticeType, noticeType, title)
	var partOf []any
	if k == KindAmendment || k == KindDisagreement {
		category = concept(SystemCorrectionComm, CodeCorrectionRequest, "")
		if first := initialCommunication(task); first != "" {
			partOf = arr(ref(first))
		}
	}
	var recips []any
	for _, rc := range recipients {
		recips = append(recips, ref(rc))
	}
	kv := []any{
		"resourceType", "Communication", "id", id,
		"partOf", partOf,
		"status", "completed",
		"category", arr(category),
		"subject", ref(refOf(task, "for")),
		"topic", obj("coding", arr(coding(SystemNoticeType, noticeType, title)), "text", title),
		"about", arr(ref("Task/" + task.String("id"))),
		"sent", r.instant(r.Now()),
		"recipient", recips,
		"sender", refDisplay(r.Owner, r.OwnerDisplay),
		"payload", arr(obj("contentString", text)),
	}
	c := obj(kv...)
	for i := 0; i+1 < len(extra); i += 2 {
		c.Set(extra[i].(string), extra[i+1])
	}
	if k == KindAmendment || k == KindDisagreement {
		addProfile(c, ProfileCorrectionComm)
	}
	return c
}

// initialCommunication is the request Communication a corrections Task came from (its input).
func initialCommunication(task *fhir.Object) string {
	for _, in := range objects(task, "input") {
		if s := refOf(in, "valueReference"); strings.HasPrefix(s, "Communication/") {
			return s
		}
	}
	return ""
}

// toPatient are the recipients of letters about a request: the requester, and the patient when another person
// (a representative) asked.
func toPatient(task *fhir.Object) []string {
	out := []string{}
	if rq := refOf(task, "requester"); rq != "" {
		out = append(out, rq)
	}
	if f := refOf(task, "for"); f != "" && !contains(out, f) {
		out = append(out, f)
	}
	return out
}

func (r *Rules) requestName(task *fhir.Object) string {
	received := task.String("authoredOn")
	if t, err := time.Parse(time.RFC3339, received); err == nil {
		received = DateOf(t, r.Loc).String()
	}
	what := map[string]string{
		CodeAccessCopy: "a copy of your records", CodeAccessInspect: "to inspect your records", CodeAccessDirected: "a copy of your records sent to a person you named",
		CodeAccounting: "an accounting of disclosures", CodeCorrectionRequest: "a correction (amendment) of your record", CodeDenialReview: "a review of a denial",
	}[requestCode(task)]
	return fmt.Sprintf("your request of %s for %s (Task/%s)", received, what, task.String("id"))
}

// ---- extension --------------------------------------------------------------------------------------------

// Extend gives the request its one extension: at most the profile's extension days past the due date, made on
// or before the due date, with a written reason and the new date sent to the patient (164.524(b)(2)(ii),
// 164.526(b)(2)(ii)).
func (r *Rules) Extend(cur *fhir.Object, a Actor, reason, newDue string) (*Plan, error) {
	k := kindOf(cur)
	if err := requireFulfiller(a, "extend a request"); err != nil {
		return nil, err
	}
	dl := extension(cur, ExtDeadline)
	if dl == nil {
		return nil, violation("Task", "a %s has no legal deadline to extend", k)
	}
	if !open(step(cur, k)) {
		return nil, violation("Task.status", "only an open request can be extended; this one is %s", cur.String("status"))
	}
	if subValue(dl, "extendedDue") != "" {
		return nil, violation("Task.extension", "a request may be extended once; it was already extended to %s", subValue(dl, "extendedDue"))
	}
	initial, err := ParseDate(subValue(dl, "initialDue"))
	if err != nil {
		return nil, violation("Task.extension", "the deadline extension has no initialDue")
	}
	if today := r.today(); initial.Before(today) {
		return nil, violation("Task.extension", "an extension must be made on or before the due date %s; today is %s", initial, today)
	}
	if strings.TrimSpace(reason) == "" {
		return nil, violation("reason", "an extension needs a written reason for the delay, which the patient receives")
	}
	due, err := ParseDate(newDue)
	if err != nil {
		return nil, violation("due", "an extension needs the new date by which the request will be acted on: %v", err)
	}
	d, _ := r.deadline(cur)
	if !d.Extendable {
		return nil, violation("Task.extension", "the rules in force (%s) allow no extension of a %s", r.inForce(), k)
	}
	if !initial.Before(due) {
		return nil, violation("due", "the new date %s must be after the current due date %s", due, initial)
	}
	if d.ExtensionLimit.Before(due) {
		return nil, violation("due", "an extension may add at most %d days: the latest date is %s, not %s", initial.DaysUntil(d.ExtensionLimit), d.ExtensionLimit, due)
	}
	t := fhir.Clone(cur).(*fhir.Object)
	text := fmt.Sprintf("We need more time to act on %s. Reason: %s. We will act on it by %s (it was due %s). The law allows one extension of this kind.",
		r.requestName(t), strings.TrimSpace(reason), due, initial)
	n := r.notice(t, NoticeExtension, "Extension of your request", text, toPatient(t))
	setExtension(t, obj("url", ExtDeadline, "extension", arr(
		obj("url", "initialDue", "valueDate", initial.String()),
		obj("url", "extendedDue", "valueDate", due.String()),
		obj("url", "extensionReason", "valueString", strings.TrimSpace(reason)),
		obj("url", "extensionNotice", "valueReference", ref("Communication/"+n.String("id"))),
		obj("url", "ruleSet", "valueCode", subValue(dl, "ruleSet")),
	)))
	r.setDue(t, k, due)
	r.touch(t)
	p := &Plan{Task: t, Message: fmt.Sprintf("extended to %s; the patient was sent Communication/%s", due, n.String("id"))}
	p.add("Communication", n, true)
	return p, nil
}

func (r *Rules) inForce() string {
	var codes []string
	for _, p := range r.Profiles {
		codes = append(codes, p.Code)
	}
	return strings.Join(codes, ", ")
}

// ---- fee ---------------------------------------------------------------------------------------------------

// Money is an amount in a currency.
type Money struct {
	Value    float64
	Currency string
	Set      bool
}

func moneyOf(o *fhir.Object) Money {
	if o == nil {
		return Money{}
	}
	v, _ := o.Get("value")
	f, err := strconv.ParseFloat(fmt.Sprint(v), 64)
	return Money{Value: f, Currency: o.String("currency"), Set: err == nil}
}

func (m Money) object() *fhir.Object {
	c := m.Currency
	if c == "" {
		c = "USD"
	}
	return obj("value", number(m.Value), "currency", c)
}

// Fee bases: how a cost-based fee was worked out (OCR guidance on 164.524(c)(4)).
var FeeBases = []string{"actual-cost", "average-cost", "flat-fee"}

// FeeParams is a fee estimate: the total, its basis, and optionally its parts (the only costs the rule allows:
// copying labour, supplies, postage).
type FeeParams struct {
	Amount                   Money
	Basis                    string
	Labor, Supplies, Postage Money
}

// FeeEstimate tells the patient in advance what a copy will cost (164.524(c)(4)). Access through the API or
// portal is free; a flat fee is at most $6.50 and only for an electronic copy; the parts, when given, add up.
func (r *Rules) FeeEstimate(cur *fhir.Object, a Actor, p FeeParams) (*Plan, error) {
	k := kindOf(cur)
	if err := requireFulfiller(a, "give a fee estimate"); err != nil {
		return nil, err
	}
	if k != KindAccess && k != KindAccounting {
		return nil, violation("Task.code", "a fee estimate is for an access request, not a %s", k)
	}
	if !open(step(cur, k)) {
		return nil, violation("Task.status", "only an open request gets a fee estimate")
	}
	if !p.Amount.Set || p.Amount.Value < 0 {
		return nil, violation("amount", "the estimate is an amount of money, zero or more")
	}
	if p.Amount.Currency != "" && p.Amount.Currency != "USD" {
		return nil, violation("amount.currency", "fees are in USD")
	}
	if !contains(FeeBases, p.Basis) {
		return nil, violation("basis", "basis is %s: only the cost of copying labour, supplies and postage may be charged, never search or retrieval", strings.Join(FeeBases, ", "))
	}
	for _, in := range ios(cur, "input", SystemAccessInput, InDelivery) {
		if d := valueString(in); (d == "api" || d == "portal") && p.Amount.Value > 0 {
			return nil, violation("amount", "access through the API or the portal is free (delivery %s)", d)
		}
	}
	if p.Basis == "flat-fee" {
		if p.Amount.Value > FlatFeeLimit {
			return nil, violation("amount", "a flat fee is at most $%.2f", FlatFeeLimit)
		}
		if !electronic(cur) {
			return nil, violation("basis", "the flat fee is only for an electronic copy of electronic records; this request is for paper")
		}
	}
	if p.Labor.Set || p.Supplies.Set || p.Postage.Set {
		sum := p.Labor.Value + p.Supplies.Value + p.Postage.Value
		if d := sum - p.Amount.Value; d > 0.005 || d < -0.005 {
			return nil, violation("amount", "the parts (labor %.2f + supplies %.2f + postage %.2f = %.2f) do not add up to %.2f", p.Labor.Value, p.Supplies.Value, p.Postage.Value, sum, p.Amount.Value)
		}
	}
	t := fhir.Clone(cur).(*fhir.Object)
	setIO(t, "output", SystemAccessOutput, OutFeeEstimate, io(SystemAccessOutput, OutFeeEstimate, "Fee estimate", "valueMoney", p.Amount.object()))
	setIO(t, "output", SystemAccessOutput, OutFeeBasis, io(SystemAccessOutput, OutFeeBasis, "Fee basis", "valueCode", p.Basis))
	r.setStep(t, k, Step{StatusInProgress, BSFeeSent})
	r.start(t)
	r.touch(t)
	parts := ""
	if p.Labor.Set || p.Supplies.Set || p.Postage.Set {
		parts = fmt.Sprintf(" (copying labour $%.2f, supplies $%.2f, postage $%.2f)", p.Labor.Value, p.Supplies.Value, p.Postage.Value)
	}
	text := fmt.Sprintf("For %s we estimate a fee of $%.2f%s, worked out as %s. Only the cost of copying, supplies and postage is charged; searching for and retrieving records is never charged.",
		r.requestName(t), p.Amount.Value, parts, p.Basis)
	n := r.notice(t, NoticeFeeEstimate, "Fee estimate for your request", text, toPatient(t))
	pl := &Plan{Task: t, Message: fmt.Sprintf("fee estimate $%.2f sent to the patient", p.Amount.Value)}
	pl.add("Communication", n, true)
	return pl, nil
}

// ---- fulfilment ---------------------------------------------------------------------------------------------

// FulfilParams says what was delivered. Dispute lists the dispute documents (164.526(d)(5)) that must go along
// with a copy sent outside the provider; the caller finds them.
type FulfilParams struct {
	Delivered []string
	Dispute   []string
	// Formats are the MIME types each delivered item is available in (a DocumentReference's attachments; a FHIR
	// resource is application/fhir+json), by reference.
	Formats map[string][]string
	// FormatAgreed is the form and format agreed with the patient when none delivered is the one asked for.
	FormatAgreed string
}

// sameFormat compares MIME types without parameters; application/json and application/fhir+json are one.
func sameFormat(a, b string) bool {
	norm := func(s string) string {
		s, _, _ = strings.Cut(strings.ToLower(strings.TrimSpace(s)), ";")
		s = strings.TrimSpace(s)
		if s == "application/json" || s == "json" {
			return "application/fhir+json"
		}
		return s
	}
	return norm(a) == norm(b)
}

// Fulfil completes an access request with what was delivered (164.524(c)). A copy directed to a third party is
// also sent to that recipient, with any dispute documents of the records it carries.
func (r *Rules) Fulfil(cur *fhir.Object, a Actor, p FulfilParams) (*Plan, error) {
	k := kindOf(cur)
	if err := requireFulfiller(a, "fulfil a request"); err != nil {
		return nil, err
	}
	if k != KindAccess && k != KindAccounting {
		return nil, violation("Task.code", "$fulfil completes an access or accounting request; a %s is completed by its own operation", k)
	}
	if !open(step(cur, k)) {
		return nil, violation("Task.status", "only an open request can be fulfilled; this one is %s", cur.String("status"))
	}
	if len(p.Delivered) == 0 {
		return nil, violation("delivered", "say what was delivered: references to the DocumentReferences, Bundle or export given to the patient")
	}
	// 164.524(c)(2)(i): the form and format asked for, if readily producible; otherwise one agreed with the
	// patient, which the records office states.
	var asked string
	for _, in := range ios(cur, "input", SystemAccessInput, InRequestedFormat) {
		asked = valueString(in)
	}
	agreed := strings.TrimSpace(p.FormatAgreed)
	if asked != "" && asked != "paper" && k == KindAccess && agreed == "" {
		found := false
		for _, d := range p.Delivered {
			for _, f := range p.Formats[d] {
				found = found || sameFormat(f, asked)
			}
		}
		if !found {
			return nil, violation("delivered", "the patient asked for %s and nothing delivered is in that format; deliver it in %s where it is readily producible, or state in format-agreed the form and format agreed with the patient (45 CFR 164.524(c)(2)(i))", asked, asked)
		}
	}
	t := fhir.Clone(cur).(*fhir.Object)
	delivered := uniq(append(append([]string{}, p.Delivered...), p.Dispute...))
	var outs []*fhir.Object
	for _, d := range delivered {
		outs = append(outs, io(SystemAccessOutput, OutDelivered, "Delivered", "valueReference", ref(d)))
	}
	setIO(t, "output", SystemAccessOutput, OutDelivered, outs...)
	if agreed != "" {
		setIO(t, "output", SystemAccessOutput, OutFormatAgreed, io(SystemAccessOutput, OutFormatAgreed, "Format agreed", "valueString", agreed))
	}
	r.setStep(t, k, Step{StatusCompleted, BSFulfilled})
	r.start(t)
	r.finish(t)
	pl := &Plan{Task: t, Message: fmt.Sprintf("fulfilled: %d item(s) delivered", len(delivered))}
	var payload []any
	for _, d := range delivered {
		payload = append(payload, obj("contentReference", ref(d)))
	}
	text := fmt.Sprintf("We have completed %s. What was provided is attached.", r.requestName(t))
	if agreed != "" {
		text += fmt.Sprintf(" It is not in the format you asked for (%s), which we could not readily produce; as agreed with you, it is provided as: %s.", asked, agreed)
	}
	n := r.notice(t, NoticeFulfilled, "Your request is complete", text, toPatient(t))
	n.Set("payload", append(list(n, "payload"), payload...))
	pl.add("Communication", n, true)
	if requestCode(t) == CodeAccessDirected {
		recipient := ""
		for _, in := range ios(t, "input", SystemAccessInput, InRecipient) {
			recipient = refOf(in, "valueReference")
		}
		dest := ""
		for _, in := range ios(t, "input", SystemAccessInput, InDestination) {
			dest = valueString(in)
		}
		c := obj("resourceType", "Communication", "id", r.NewID(), "status", "completed",
			"category", arr(concept(SystemNoticeType, "directed-copy", "Copy of records sent at the patient's direction")),
			"subject", ref(refOf(t, "for")), "about", arr(ref("Task/"+t.String("id"))), "sent", r.instant(r.Now()),
			"recipient", arr(ref(recipient)), "sender", refDisplay(r.Owner, r.OwnerDisplay),
			"note", arr(obj("text", "Sent at the patient's written, signed direction (45 CFR 164.524(c)(3)(ii)) to: "+dest)),
			"payload", payload)
		if recipient == "" {
			c.Delete("recipient")
		}
		pl.add("Communication", c, true)
	}
	return pl, nil
}

func uniq(l []string) []string {
	var out []string
	for _, s := range l {
		if s != "" && !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// Redirect completes an access request for records the provider does not hold, saying where they are
// (164.524(d)(3)).
func (r *Rules) Redirect(cur *fhir.Object, a Actor, where string) (*Plan, error) {
	k := kindOf(cur)
	if err := requireFulfiller(a, "redirect a request"); err != nil {
		return nil, err
	}
	if k != KindAccess {
		return nil, violation("Task.code", "$redirect is for an access request, not a %s", k)
	}
	if !open(step(cur, k)) {
		return nil, violation("Task.status", "only an open request can be redirected")
	}
	if strings.TrimSpace(where) == "" {
		return nil, violation("where", "say where the records are kept, so the patient can ask there (45 CFR 164.524(d)(3))")
	}
	t := fhir.Clone(cur).(*fhir.Object)
	setIO(t, "output", SystemAccessOutput, OutRedirectTo, io(SystemAccessOutput, OutRedirectTo, "Ask here instead", "valueString", strings.TrimSpace(where)))
	r.setStep(t, k, Step{StatusCompleted, BSRedirected})
	r.start(t)
	r.finish(t)
	text := fmt.Sprintf("We do not hold the records of %s. They are kept by: %s. Please send your request there.", r.requestName(t), strings.TrimSpace(where))
	pl := &Plan{Task: t, Message: "completed: not held here, the patient was told where to ask"}
	pl.add("Communication", r.notice(t, NoticeRedirect, "Where to send your request", text, toPatient(t)), true)
	return pl, nil
}

// ---- denial -------------------------------------------------------------------------------------------------

// DenyParams are the structured parts of a denial notice; empty parts take the configured defaults.
type DenyParams struct {
	Ground, Basis                         string
	ContactName, ContactPhone             string
	Complaint, ReviewHowTo, DisagreeHowTo string
	Delivered                             []string // a partial denial: what was given
}

// Dispute is what the caller found about the records an amendment request disputes: their references, and
// the request's text (for the dispute documents appended to them, 164.526(d)(4)).
type Dispute struct {
	Targets     []string
	RequestText string
}

// Deny completes a request with a coded ground and a written notice composed from its parts; a notice missing
// a part the rule requires is refused (164.524(d)(2), 164.526(d)(1)).
func (r *Rules) Deny(cur *fhir.Object, a Actor, p DenyParams, d Dispute) (*Plan, error) {
	k := kindOf(cur)
	if err := requireFulfiller(a, "deny a request"); err != nil {
		return nil, err
	}
	if k != KindAccess && k != KindAmendment && k != KindAccounting {
		return nil, violation("Task.code", "a %s is not denied", k)
	}
	if !open(step(cur, k)) {
		return nil, violation("Task.status", "only an open request can be denied; this one is %s", cur.String("status"))
	}
	grounds, system, rule := AccessGrounds, SystemAccessDenial, "45 CFR 164.524(d)(2)"
	if k == KindAmendment {
		grounds, system, rule = AmendmentGrounds, SystemAmendmentDenial, "45 CFR 164.526(d)(1)"
	}
	g, ok := findGround(grounds, p.Ground)
	if !ok {
		codes := make([]string, len(grounds))
		for i, x := range grounds {
			codes[i] = x.Code
		}
		return nil, violation("ground", "a denial names its ground, one of %s (%s); got %q", strings.Join(codes, ", "), system, p.Ground)
	}
	c := r.Contact
	pick := func(v, def string) string {
		if strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
		return def
	}
	name, phone := pick(p.ContactName, c.Name), pick(p.ContactPhone, c.Phone)
	complaint := pick(p.Complaint, c.Complaint)
	missing := func(part, why string) error {
		return violation(part, "the denial notice must %s (%s); give %s or configure a default", why, rule, part)
	}
	switch {
	case strings.TrimSpace(p.Basis) == "":
		return nil, missing("basis", "state the basis for the denial in plain language")
	case name == "":
		return nil, missing("contact-name", "give the name or title of the contact person or office")
	case phone == "":
		return nil, missing("contact-phone", "give the contact's telephone number")
	case complaint == "":
		return nil, missing("complaint", "say how to complain to the provider")
	}
	var letter strings.Builder
	fmt.Fprintf(&letter, "We have denied %s%s.\n\nBasis: %s — %s (%s).\n", r.requestName(cur), map[bool]string{true: " in part", false: ""}[len(p.Delivered) > 0], g.Display, strings.TrimSpace(p.Basis), g.Rule)
	if k == KindAccess || k == KindAccounting {
		if g.Reviewable {
			how := pick(p.ReviewHowTo, c.ReviewHowTo)
			if how == "" {
				return nil, missing("review-rights", "say how to ask for a review of this reviewable denial")
			}
			fmt.Fprintf(&letter, "\nYour right to a review: you may have this denial reviewed by a licensed health care professional who did not take part in it (45 CFR 164.524(a)(4)). How to ask: %s\n", how)
		} else {
			fmt.Fprintf(&letter, "\nThis ground is not subject to review (45 CFR 164.524(a)(2)).\n")
		}
	} else {
		how := pick(p.DisagreeHowTo, c.DisagreeHowTo)
		if how == "" {
			return nil, missing("disagree-how-to", "say how to file a statement of disagreement")
		}
		fmt.Fprintf(&letter, "\nYour right to disagree: you may file a written statement disagreeing with this denial and the basis for it. How: %s\n", how)
		fmt.Fprintf(&letter, "If you do not file a statement of disagreement, you may ask that your request for amendment and this denial be provided with any future disclosures of the information concerned.\n")
	}
	fmt.Fprintf(&letter, "\nHow to complain: %s You may also complain to the Secretary of the U.S. Department of Health and Human Services (Office for Civil Rights), in writing, within 180 days of when you knew or should have known of this (45 CFR 160.306): https://www.hhs.gov/ocr/complaints\n", complaint)
	fmt.Fprintf(&letter, "\nContact: %s, telephone %s.\n", name, phone)

	t := fhir.Clone(cur).(*fhir.Object)
	reason := concept(system, g.Code, g.Display)
	reason.Set("text", strings.TrimSpace(p.Basis))
	t.Set("statusReason", reason)
	bs := BSDenied
	if len(p.Delivered) > 0 {
		if k != KindAccess {
			return nil, violation("delivered", "a partial denial with delivered records is for access requests")
		}
		bs = BSPartial
		var outs []*fhir.Object
		for _, x := range p.Delivered {
			outs = append(outs, io(SystemAccessOutput, OutDelivered, "Delivered", "valueReference", ref(x)))
		}
		setIO(t, "output", SystemAccessOutput, OutDelivered, outs...)
	}
	n := r.notice(t, NoticeDenial, "Your request was denied", letter.String(), toPatient(t), "reasonCode", arr(concept(system, g.Code, g.Display)))
	if k == KindAmendment {
		addIO(t, "output", io(SystemCorrectionOutput, CodeResolution, "", "valueReference", ref("Communication/"+n.String("id"))))
	} else {
		setIO(t, "output", SystemAccessOutput, OutDenialNotice, io(SystemAccessOutput, OutDenialNotice, "Denial notice", "valueReference", ref("Communication/"+n.String("id"))))
	}
	r.setStep(t, k, Step{StatusCompleted, bs})
	r.start(t)
	r.finish(t)
	if a.Ref != "" {
		setExtension(n, obj("url", ExtDecidedBy, "valueReference", ref(a.Ref)))
	}
	pl := &Plan{Task: t, Message: fmt.Sprintf("denied (%s); notice Communication/%s sent to the patient", g.Code, n.String("id"))}
	pl.add("Communication", n, true)
	pl.add("Provenance", r.provenance([]string{"Task/" + t.String("id"), "Communication/" + n.String("id")}, a, "Denial of "+k.String(), "", ""), true)
	if k == KindAmendment {
		for _, doc := range r.disputeDocs(t, d.Targets, []disputePart{
			{DisputeRequest, "Request for amendment", firstNonEmpty(d.RequestText, "(the request as filed: see Task/"+t.String("id")+")"), refOf(t, "requester")},
			{DisputeDenial, "Denial of the request for amendment", letter.String(), r.Owner},
		}) {
			pl.add("DocumentReference", doc, true)
		}
	}
	return pl, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}

type disputePart struct{ role, title, text, author string }

// disputeDocs are the DocumentReferences that keep an amendment dispute with the record (164.526(d)(4)): each
// appends to every disputed DocumentReference and names every disputed record in context.related, tagged with
// its role so that disclosures can include them (164.526(d)(5)).
func (r *Rules) disputeDocs(task *fhir.Object, targets []string, parts []disputePart) []*fhir.Object {
	var out []*fhir.Object
	for _, p := range parts {
		var relates, related []any
		for _, tg := range targets {
			if strings.HasPrefix(tg, "DocumentReference/") {
				relates = append(relates, obj("code", "appends", "target", ref(tg)))
			}
			related = append(related, ref(tg))
		}
		related = append(related, ref("Task/"+task.String("id")))
		var authors []any
		if p.author != "" {
			authors = arr(ref(p.author))
		}
		doc := obj(
			"resourceType", "DocumentReference", "id", r.NewID(),
			"meta", obj("tag", arr(coding(SystemDisputeRole, p.role, p.title))),
			"status", "current",
			"docStatus", "final",
			"type", obj("coding", arr(coding(SystemDisputeRole, p.role, p.title)), "text", p.title),
			"subject", ref(refOf(task, "for")),
			"date", r.instant(r.Now()),
			"author", authors,
			"custodian", ref(orgOnly(r.Owner)),
			"relatesTo", relates,
			"description", p.title+" about the records in context.related",
			"content", arr(obj("attachment", obj("contentType", "text/plain; charset=utf-8", "language", "en",
				"data", base64.StdEncoding.EncodeToString([]byte(p.text)), "title", p.title, "creation", r.instant(r.Now())))),
			"context", obj("related", related),
		)
		out = append(out, doc)
	}
	return out
}

// orgOnly keeps a reference when it is to an Organization (DocumentReference.custodian's type).
func orgOnly(reference string) string {
	if strings.HasPrefix(reference, "Organization/") {
		return reference
	}
	return ""
}

// provenance records who did what to which resources: the actor as author (the records contact when a system
// acted), with the patient's request as the reason.
func (r *Rules) provenance(targets []string, a Actor, activity, operation, revisionOf string) *fhir.Object {
	var tg []any
	for _, t := range targets {
		tg = append(tg, ref(t))
	}
	who := a.Ref
	if who == "" {
		who = r.Owner
	}
	var act *fhir.Object
	if operation != "" {
		act = obj("coding", arr(coding(SystemProvenanceAct, operation, "")), "text", activity)
	} else {
		act = obj("text", activity)
	}
	var entity []any
	if revisionOf != "" {
		entity = arr(obj("role", "revision", "what", ref(revisionOf)))
	}
	return obj(
		"resourceType", "Provenance", "id", r.NewID(),
		"target", tg,
		"recorded", r.instant(r.Now()),
		"reason", arr(concept(SystemActReason, "PATRQT", "patient requested")),
		"activity", act,
		"agent", arr(obj("type", concept(SystemProvenanceAgent, "author", "Author"), "who", ref(who))),
		"entity", entity,
	)
}

// Disclosure is one disclosure of a patient's records outside the provider, from the audit trail.
type Disclosure struct {
	When, To string
	What     []string
}

// AccountingDocument is the accounting of disclosures (164.528) that fulfils an accounting request: a
// DocumentReference for the patient listing, for the six years before the request, when, to whom and what.
func (r *Rules) AccountingDocument(task *fhir.Object, ds []Disclosure) *fhir.Object {
	var b strings.Builder
	fmt.Fprintf(&b, "Accounting of disclosures for %s, for the six years before %s (45 CFR 164.528).\n\n", refOf(task, "for"), task.String("authoredOn"))
	if len(ds) == 0 {
		b.WriteString("No disclosures outside this provider were recorded.\n")
	}
	for _, d := range ds {
		fmt.Fprintf(&b, "- %s: to %s: %s\n", d.When, d.To, strings.Join(d.What, ", "))
	}
	return obj(
		"resourceType", "DocumentReference", "id", r.NewID(),
		"status", "current",
		"docStatus", "final",
		"type", obj("text", "Accounting of disclosures"),
		"subject", ref(refOf(task, "for")),
		"date", r.instant(r.Now()),
		"custodian", ref(orgOnly(r.Owner)),
		"description", fmt.Sprintf("Accounting of disclosures (%d) for Task/%s", len(ds), task.String("id")),
		"content", arr(obj("attachment", obj("contentType", "text/plain; charset=utf-8", "language", "en",
			"data", base64.StdEncoding.EncodeToString([]byte(b.String())), "title", "Accounting of disclosures", "creation", r.instant(r.Now())))),
		"context", obj("related", arr(ref("Task/"+task.String("id")))),
	)
}
