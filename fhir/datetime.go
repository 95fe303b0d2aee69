package fhir

import (
	"fmt"
	"strconv"
	"time"
)

// Precision is how much of a date/time a value gives.
type Precision int

// Precisions, from coarsest to finest.
const (
	PrecYear Precision = iota
	PrecMonth
	PrecDay
	PrecMinute
	PrecSecond
	PrecFraction
)

// DateTime is a parsed FHIR date, dateTime or instant with its precision. Range gives the interval it denotes.
type DateTime struct {
	T         time.Time // start of the value, in its own zone (or loc when it has none)
	Precision Precision
	HasZone   bool
	fracLen   int
}

// Range returns the half-open interval [lo, hi) of instants the value covers: "2020" covers the whole year,
// "2020-03-01T10:00:00Z" covers one second.
func (d DateTime) Range() (lo, hi time.Time) {
	lo = d.T
	switch d.Precision {
	case PrecYear:
		hi = lo.AddDate(1, 0, 0)
	case PrecMonth:
		hi = lo.AddDate(0, 1, 0)
	case PrecDay:
		hi = lo.AddDate(0, 0, 1)
	case PrecMinute:
		hi = lo.Add(time.Minute)
	case PrecSecond:
		hi = lo.Add(time.Second)
	default:
		step := time.Duration(1)
		for i := d.fracLen; i < 9; i++ {
			step *= 10
		}
		hi = lo.Add(step)
	}
	return lo, hi
}

// ParseDateTime parses a FHIR date, dateTime or instant. kind is "date", "dateTime", "instant" or "search" (a
// search value: dateTime that may stop at minutes). Values without a zone are placed in loc. The error says what
// is wrong in words a client can act on.
func ParseDateTime(kind, s string, loc *time.Location) (DateTime, error) {
	var d DateTime
	fail := func(why string) (DateTime, error) {
		return DateTime{}, fmt.Errorf("%q is not a valid FHIR %s: %s", s, kind, why)
	}
	num := func(from, n int) (int, bool) {
		if from+n > len(s) {
			return 0, false
		}
		v := 0
		for i := from; i < from+n; i++ {
			c := s[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	year, ok := num(0, 4)
	if !ok || year == 0 {
		return fail("expected a four-digit year (0001-9999) first")
	}
	month, day := 1, 1
	hour, minute, sec, nsec := 0, 0, 0, 0
	i := 4
	d.Precision = PrecYear
	if i < len(s) {
		if s[i] != '-' {
			return fail("expected '-' after the year")
		}
		if month, ok = num(i+1, 2); !ok || month < 1 || month > 12 {
			return fail("month must be 01-12")
		}
		i += 3
		d.Precision = PrecMonth
	}
	if i < len(s) {
		if s[i] != '-' {
			return fail("expected '-' after the month")
		}
		if day, ok = num(i+1, 2); !ok || day < 1 || day > daysIn(year, month) {
			return fail(fmt.Sprintf("day must be 01-%02d for %04d-%02d", daysIn(year, month), year, month))
		}
		i += 3
		d.Precision = PrecDay
	}
	if kind == "date" && i < len(s) {
		return fail("a date has no time part")
	}
	if kind == "instant" && d.Precision != PrecDay {
		return fail("an instant needs year, month, day, time and zone")
	}
	if i < len(s) {
		if s[i] != 'T' {
			return fail("expected 'T' before the time")
		}
		if hour, ok = num(i+1, 2); !ok || hour > 23 {
			return fail("hour must be 00-23")
		}
		if i+3 >= len(s) || s[i+3] != ':' {
			return fail("expected hh:mm:ss after 'T'")
		}
		if minute, ok = num(i+4, 2); !ok || minute > 59 {
			return fail("minutes must be 00-59")
		}
		i += 6
		d.Precision = PrecMinute
		if i < len(s) && s[i] == ':' {
			if sec, ok = num(i+1, 2); !ok || sec > 60 {
				return fail("seconds must be 00-60")
			}
			i += 3
			d.Precision = PrecSecond
			if i < len(s) && s[i] == '.' {
				j := i + 1
				for j < len(s) && s[j] >= '0' && s[j] <= '9' {
					j++
				}
				if j == i+1 {
					return fail("expected digits after '.'")
				}
				frac := s[i+1 : j]
				d.fracLen = len(frac)
				if len(frac) > 9 {
					frac = frac[:9]
					d.fracLen = 9
				}
				n, _ := strconv.Atoi(frac)
				for k := len(frac); k < 9; k++ {
					n *= 10
				}
				nsec = n
				i = j
				d.Precision = PrecFraction
			}
		} else if kind != "search" {
			return fail("seconds are required when a time is given")
		}
		if i >= len(s) {
			if kind != "search" {
				return fail("a time needs a zone: Z or +hh:mm/-hh:mm")
			}
		} else if s[i] == 'Z' {
			if i != len(s)-1 {
				return fail("unexpected text after 'Z'")
			}
			loc = time.UTC
			d.HasZone = true
		} else if s[i] == '+' || s[i] == '-' {
			zh, ok1 := num(i+1, 2)
			zm, ok2 := num(i+4, 2)
			if !ok1 || !ok2 || s[i+3] != ':' || len(s) != i+6 || zh > 14 || zm > 59 {
				return fail("zone must be Z or +hh:mm/-hh:mm")
			}
			off := zh*3600 + zm*60
			if s[i] == '-' {
				off = -off
			}
			loc = time.FixedZone("", off)
			d.HasZone = true
		} else {
			return fail("unexpected text after the time")
		}
	}
	if loc == nil {
		loc = time.UTC
	}
	d.T = time.Date(year, time.Month(month), day, hour, minute, sec, nsec, loc)
	return d, nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// ParseTime checks a FHIR time (hh:mm:ss with optional fraction).
func ParseTime(s string) error {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return fmt.Errorf("%q is not a valid FHIR time: expected hh:mm:ss", s)
	}
	h, err1 := strconv.Atoi(s[0:2])
	m, err2 := strconv.Atoi(s[3:5])
	sec, err3 := strconv.Atoi(s[6:8])
	if err1 != nil || err2 != nil || err3 != nil || h > 23 || m > 59 || sec > 60 {
		return fmt.Errorf("%q is not a valid FHIR time: expected hh:mm:ss within a day", s)
	}
	if len(s) > 8 {
		if s[8] != '.' || len(s) == 9 {
			return fmt.Errorf("%q is not a valid FHIR time: unexpected text after seconds", s)
		}
		for _, c := range s[9:] {
			if c < '0' || c > '9' {
				return fmt.Errorf("%q is not a valid FHIR time: fraction must be digits", s)
			}
		}
	}
	return nil
}

// FormatInstant writes t as a FHIR instant in UTC with millisecond precision.
func FormatInstant(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
