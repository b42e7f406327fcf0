-- The raw tables are loaded by `dbt seed`; this hint orders seed -> model in `dbt build`.
-- depends_on: {{ ref('raw_payments') }}

select
    id as payment_id,
    order_id,
    payment_method,
    amount as amount_cents,
    cast(amount / 100.0 as numeric(12, 2)) as amount
from {{ source('shop_raw', 'raw_payments') }}
