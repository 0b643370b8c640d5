"""Generate a synthetic subscription-churn data set.

One row per customer: a few static account fields, 18 months of monthly
activity (month 01 is the oldest, month 18 the most recent) and the label
`churned_6m` (1 if the customer cancels within the 6 months after month 18).
`plan` (basic, standard, premium), `region` (north, south, east, west, central)
and `contract` (monthly, annual, two_year) are text; every other column is a number.

The label comes from a latent risk model: falling usage, support tickets,
late payments, month-to-month contracts, high prices and short tenure all
raise the risk. The output is deterministic for a given --seed.

    python generate_data.py --seed 7 --customers 4000 --out data/customers.csv
"""

import argparse
import csv
import os
import sys

import numpy as np

MONTHS = 18
METRICS = ("logins", "hours", "tickets", "late")

# The categorical fields are written as the words a billing or CRM export would hold. The
# latent model below works on their codes (the index into these tuples), so a seed draws the
# same customers whatever the words.
PLANS = ("basic", "standard", "premium")
PLAN_PRICES = np.array([9.99, 19.99, 39.99])  # per plan, in the order of PLANS
REGIONS = ("north", "south", "east", "west", "central")
CONTRACTS = ("monthly", "annual", "two_year")


def columns():
    static = ["customer_id", "plan", "monthly_price", "tenure_months",
              "region", "contract", "autopay"]
    monthly = [f"{m}_m{i:02d}" for m in METRICS for i in range(1, MONTHS + 1)]
    return static + monthly + ["churned_6m"]


def generate(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(MONTHS) / (MONTHS - 1)  # 0 .. 1 across the window

    # --- static fields -------------------------------------------------
    plan_tier = rng.choice(len(PLANS), size=n, p=[0.45, 0.38, 0.17])
    discount = rng.choice([0.0, 0.1, 0.2], size=n, p=[0.75, 0.18, 0.07])
    monthly_price = np.round(PLAN_PRICES[plan_tier] * (1 - discount), 2)
    tenure_months = np.clip(np.round(rng.gamma(2.2, 16.0, size=n)) + MONTHS, MONTHS, 120).astype(int)
    region = rng.choice(len(REGIONS), size=n, p=[0.30, 0.25, 0.20, 0.15, 0.10])
    # longer-tenured customers are more often on annual / two-year contracts
    p_long = 1 / (1 + np.exp(-(tenure_months - 40) / 15))
    u = rng.random(n)
    contract = np.where(u < 0.55 * (1 - p_long) + 0.2 * p_long, 0,
                        np.where(u < 0.85 - 0.1 * p_long, 1, 2))
    autopay = (rng.random(n) < np.where(contract == 0, 0.45, 0.75)).astype(int)

    # --- latent customer state ----------------------------------------
    engagement = rng.lognormal(0.0, 0.45, size=n) * (1 + 0.25 * plan_tier)
    # "drift" > 0: the customer is slowly losing interest during the window
    drift = np.clip(rng.normal(0.15, 0.45, size=n) + 0.25 * (contract == 0), -0.6, 1.5)
    drift = np.maximum(drift, 0) * (rng.random(n) < 0.6)  # many stay flat
    friction = rng.gamma(1.2, 0.6, size=n)  # product problems -> tickets
    money_trouble = rng.beta(1.0, 12.0, size=n) * (1.6 - 0.6 * autopay)

    # --- monthly activity ---------------------------------------------
    trend = 1 - drift[:, None] * t[None, :] ** 1.5  # accelerating decline
    trend = np.clip(trend, 0.05, None)
    season = 1 + 0.06 * np.sin(2 * np.pi * (np.arange(MONTHS) + region[:, None]) / 12)
    level = engagement[:, None] * trend * season

    logins = rng.poisson(np.clip(14 * level, 0.2, None))
    hours = np.round(rng.gamma(4.0, np.clip(level, 0.05, None) * 2.5) * (logins > 0), 0).astype(int)
    ticket_rate = 0.12 * friction[:, None] * (1 + 1.5 * drift[:, None] * t[None, :])
    tickets = rng.poisson(ticket_rate)
    late = (rng.random((n, MONTHS)) < money_trouble[:, None]).astype(int)

    # --- label from observed behaviour ---------------------------------
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    early = logins[:, :6].mean(1) + 1
    recent = logins[:, -6:].mean(1) + 1
    fading = sigmoid((0.6 - recent / early) * 12)          # usage fell below ~60 % of its early level
    recent_tickets = tickets[:, -6:].sum(1)
    frustrated = np.minimum(recent_tickets, 4) / 4          # saturates after a few tickets
    recent_late = late[:, -6:].sum(1)
    new_customer = np.exp(-(tenure_months - MONTHS) / 12)   # the first years are the riskiest
    month_to_month = contract == 0
    logit = (-3.0
             + 3.2 * fading
             + 1.2 * frustrated * (1 + fading)               # tickets hurt more when usage falls
             + 1.8 * (recent_late >= 2) + 0.3 * recent_late
             + month_to_month * (1.1 + 0.04 * (monthly_price - 15))  # only they can leave at once
             - 0.7 * (contract == 2)
             - 0.3 * autopay
             + 0.9 * new_customer
             + 0.15 * (region == 3)
             + rng.normal(0, 0.4, size=n))
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    rows = []
    for i in range(n):
        rows.append([f"C{i + 1:05d}", PLANS[plan_tier[i]], f"{monthly_price[i]:.2f}",
                     tenure_months[i], REGIONS[region[i]], CONTRACTS[contract[i]], autopay[i],
                     *logins[i], *hours[i], *tickets[i], *late[i], churned[i]])
    return rows, churned.mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--customers", type=int, default=4000)
    ap.add_argument("--out", default="data/customers.csv")
    args = ap.parse_args()
    if args.customers < 1:
        sys.exit("--customers must be at least 1")

    rows, rate = generate(args.customers, args.seed)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns())
        w.writerows(rows)
    print(f"wrote {args.out}: {len(rows)} customers, churn rate {rate:.1%}")


if __name__ == "__main__":
    main()
