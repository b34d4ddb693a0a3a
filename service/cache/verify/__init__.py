"""Learned hit decisions against an error budget (issue 12's decision core).

`decision.decide` turns one candidate's guard result, its entry's `evidence.Evidence`
and the calibrated `prior.Prior` into SERVE, EXPLORE or MISS; `online` holds the
exploration budget, the error budget and the live calibration; `forms` matches
everyday question forms. Pure code: the gateway wires it in.
"""
