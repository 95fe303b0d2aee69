package rights

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Date is a calendar date in the provider's time zone.
type Date struct {
	Y int
	M time.Month
	D int
}

// DateOf is the calendar date of t in loc.
func DateOf(t time.Time, loc *time.Location) Date {
	y, m, d := t.In(loc).Date()
	return Date{y, m, d}
}

// ParseDate reads YYYY-MM-DD.
func ParseDate(s string) (Date, error) {
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return Date{}, fmt.Errorf("%q is not a date (YYYY-MM-DD)", s)
	}
	return Date{t.Year(), t.Month(), t.Day()}, nil
}

func (d Date) String() string { return fmt.Sprintf("%04d-%02d-%02d", d.Y, d.M, d.D) }

func (d Date) time() time.Time { return time.Date(d.Y, d.M, d.D, 12, 0, 0, 0, time.UTC) }

// AddDays is the date n calendar days later.
func (d Date) AddDays(n int) Date {
	t := d.time().AddDate(0, 0, n)
	return Date{t.Year(), t.Month(), t.Day()}
}

// Before reports whether d is strictly earlier than e.
func (d Date) Before(e Date) bool { return d.time().Before(e.time()) }

// Weekday of the date.
func (d Date) Weekday() time.Weekday { return d.time().Weekday() }

// DaysUntil is the number of calendar days from d to e (negative when e is earlier).
func (d Date) DaysUntil(e Date) int { return int(e.time().Sub(d.time()).Hours() / 24) }

// Clock is how long a profile gives for one kind of request.
type Clock struct {
	Days          int
	BusinessDays  bool // count business days (Monday to Friday, not holidays) instead of calendar days
	ExtensionDays int  // the most one extension may add (calendar days); 0: no extension
	MaxExtensions int
	// ElectronicOnly: the clock applies only when the copy is requested in an electronic format (Texas HSC 181.102).
	ElectronicOnly bool
}

// Profile is a jurisdiction's deadline rules: days per request code (Carta request-type codes, and
// "medRecCxReq" for amendments), counted in calendar or business days.
type Profile struct {
	Code, Title, Source string
	Clocks              map[string]Clock
	// Holidays are the non-business days besides weekends (for business-day clocks).
	Holidays []Date
	// FederalHolidays adds the US federal holidays (observed dates) to Holidays.
	FederalHolidays bool
}

// HIPAA is the federal floor, always in force: access 30(+30) days (164.524(b)(2)), amendment 60(+30)
// (164.526(b)(2)), accounting of disclosures 60(+30) (164.528(c)).
var HIPAA = Profile{
	Code: "HIPAA", Title: "HIPAA Privacy Rule (45 CFR 164.524, 164.526, 164.528)", Source: "https://www.ecfr.gov/current/title-45/subtitle-A/subchapter-C/part-164/subpart-E",
	Clocks: map[string]Clock{
		CodeAccessCopy:        {Days: 30, ExtensionDays: 30, MaxExtensions: 1},
		CodeAccessInspect:     {Days: 30, ExtensionDays: 30, MaxExtensions: 1},
		CodeAccessDirected:    {Days: 30, ExtensionDays: 30, MaxExtensions: 1},
		CodeAccounting:        {Days: 60, ExtensionDays: 30, MaxExtensions: 1},
		CodeCorrectionRequest: {Days: 60, ExtensionDays: 30, MaxExtensions: 1},
	},
}

// Profiles are the built-in jurisdiction profiles besides HIPAA; stricter state law wins (45 CFR 160.203(b)).
var Profiles = []Profile{
	{
		Code: "US-CA", Title: "California: inspection within 5 working days, copies within 15 days", Source: "Cal. Health & Safety Code §123110",
		Clocks: map[string]Clock{
			CodeAccessInspect: {Days: 5, BusinessDays: true},
			CodeAccessCopy:    {Days: 15},
		},
		FederalHolidays: true,
	},
	{
		Code: "US-TX", Title: "Texas: electronic copy of an electronic health record within 15 business days", Source: "Tex. Health & Safety Code §181.102",
		Clocks: map[string]Clock{
			CodeAccessCopy:     {Days: 15, BusinessDays: true, ElectronicOnly: true},
			CodeAccessDirected: {Days: 15, BusinessDays: true, ElectronicOnly: true},
		},
		FederalHolidays: true,
	},
	{
		Code: "HIPAA-2021-NPRM", Title: "Proposed 2021 HIPAA changes (never finalized): access within 15 days, one 15-day extension", Source: "86 FR 6446",
		Clocks: map[string]Clock{
			CodeAccessCopy:     {Days: 15, ExtensionDays: 15, MaxExtensions: 1},
			CodeAccessInspect:  {Days: 15, ExtensionDays: 15, MaxExtensions: 1},
			CodeAccessDirected: {Days: 15, ExtensionDays: 15, MaxExtensions: 1},
		},
	},
}

// ProfileByCode finds a built-in profile.
func ProfileByCode(code string) (Profile, bool) {
	if strings.EqualFold(code, HIPAA.Code) {
		return HIPAA, true
	}
	for _, p := range Profiles {
		if strings.EqualFold(p.Code, code) {
			return p, true
		}
	}
	return Profile{}, false
}

// isHoliday reports whether d is a non-business day of the profile besides weekends.
func (p *Profile) isHoliday(d Date) bool {
	for _, h := range p.Holidays {
		if h == d {
			return true
		}
	}
	return p.FederalHolidays && isFederalHoliday(d)
}

// addBusinessDays counts n business days after d (d itself is the day of receipt and does not count).
func (p *Profile) addBusinessDays(d Date, n int) Date {
	for n > 0 {
		d = d.AddDays(1)
		if wd := d.Weekday(); wd == time.Saturday || wd == time.Sunday || p.isHoliday(d) {
			continue
		}
		n--
	}
	return d
}

// due is the profile's due date for a request received on day 0, or false when the profile has no clock for it.
func (p *Profile) due(code string, received Date, electronic bool) (Date, Clock, bool) {
	c, ok := p.Clocks[code]
	if !ok || (c.ElectronicOnly && !electronic) {
		return Date{}, Clock{}, false
	}
	if c.BusinessDays {
		return p.addBusinessDays(received, c.Days), c, true
	}
	return received.AddDays(c.Days), c, true
}

// Deadline is the clock of one request: the earliest due date of the profiles in force, and which gave it.
type Deadline struct {
	Due     Date
	RuleSet string
	// ExtensionLimit is the latest date one extension may reach: the earliest, over the profiles in force, of
	// each profile's own due date plus the extension it allows. Not after Due: no extension possible.
	ExtensionLimit Date
	Extendable     bool
}

// ComputeDeadline applies every profile in force to a request of the given code received on a date; the
// earliest due date wins (45 CFR 160.203(b)). ok is false when no profile has a clock for the code.
func ComputeDeadline(profiles []Profile, code string, received Date, electronic bool) (Deadline, bool) {
	var d Deadline
	found := false
	for i := range profiles {
		p := &profiles[i]
		due, c, ok := p.due(code, received, electronic)
		if !ok {
			continue
		}
		limit := due
		if c.MaxExtensions > 0 {
			limit = due.AddDays(c.ExtensionDays)
		}
		if !found || due.Before(d.Due) {
			d.Due, d.RuleSet = due, p.Code
		}
		if !found || limit.Before(d.ExtensionLimit) {
			d.ExtensionLimit = limit
		}
		found = true
	}
	d.Extendable = found && d.Due.Before(d.ExtensionLimit)
	return d, found
}

// isFederalHoliday reports US federal holidays (5 U.S.C. 6103) on their observed dates: a Saturday holiday is
// observed on Friday, a Sunday one on Monday.
func isFederalHoliday(d Date) bool {
	for _, h := range federalHolidays(d.Y) {
		if h == d {
			return true
		}
	}
	// New Year's Day of the next year observed on 31 December.
	if d.M == time.December && d.D == 31 {
		return observed(Date{d.Y + 1, time.January, 1}) == d
	}
	return false
}

func federalHolidays(y int) []Date {
	nth := func(m time.Month, wd time.Weekday, n int) Date {
		d := Date{y, m, 1}
		for d.Weekday() != wd {
			d = d.AddDays(1)
		}
		return d.AddDays(7 * (n - 1))
	}
	last := func(m time.Month, wd time.Weekday) Date {
		d := Date{y, m + 1, 1}.AddDays(-1)
		if m == time.December {
			d = Date{y, time.December, 31}
		}
		for d.Weekday() != wd {
			d = d.AddDays(-1)
		}
		return d
	}
	hs := []Date{
		observed(Date{y, time.January, 1}),
		nth(time.January, time.Monday, 3),
		nth(time.February, time.Monday, 3),
		last(time.May, time.Monday),
		observed(Date{y, time.June, 19}),
		observed(Date{y, time.July, 4}),
		nth(time.September, time.Monday, 1),
		nth(time.October, time.Monday, 2),
		observed(Date{y, time.November, 11}),
		nth(time.November, time.Thursday, 4),
		observed(Date{y, time.December, 25}),
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Before(hs[j]) })
	return hs
}

func observed(d Date) Date {
	switch d.Weekday() {
	case time.Saturday:
		return d.AddDays(-1)
	case time.Sunday:
		return d.AddDays(1)
	}
	return d
}
