with order_stats as (

    select
        customer_id,
        min(ordered_at) as first_order_at,
        max(ordered_at) as last_order_at,
        count(*) as number_of_orders,
        sum(
            case
                when status in ('{{ var("revenue_statuses") | join("', '") }}') then total_amount
                else 0
            end
        ) as lifetime_value
    from {{ ref('orders') }}
    group by customer_id

)

select
    c.customer_id,
    c.full_name,
    c.email,
    c.city,
    c.signed_up_on,
    s.first_order_at,
    s.last_order_at,
    coalesce(s.number_of_orders, 0) as number_of_orders,
    coalesce(s.lifetime_value, 0) as lifetime_value
from {{ ref('stg_customers') }} as c
left join order_stats as s on s.customer_id = c.customer_id
