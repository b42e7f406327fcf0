-- The raw tables are loaded by `dbt seed`; this hint orders seed -> model in `dbt build`.
-- depends_on: {{ ref('raw_orders') }}

select
    id as order_id,
    customer_id,
    cast(ordered_at as timestamp) as ordered_at,
    cast(ordered_at as date) as order_date,
    status
from {{ source('shop_raw', 'raw_orders') }}
